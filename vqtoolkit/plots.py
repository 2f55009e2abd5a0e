"""Curve plots of a run's metrics, drawn with Pillow: people look at a picture before they read numbers.

`plot_curves` turns `metrics.jsonl` records into one small panel per figure (losses, PSNR, codebook
usage, bits per token, information gain, ...), each with its range and last value written on it.
Pillow's built-in font keeps this free of a plotting dependency.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SKIP = {"step", "time", "epoch"}  # the x axis and bookkeeping, not curves
PANEL = (300, 170)  # width, height of one panel in pixels
MARGIN = (46, 22, 10, 18)  # left, top, right, bottom
COLUMNS = 3


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (damaged lines are skipped: a run may be writing it)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curves(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points of every numeric figure, in order of first appearance."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if "step" not in r:
            continue
        for key, value in r.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                out.setdefault(key, []).append((float(r["step"]), float(value)))
    return out


def _label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _panel(name: str, points: list[tuple[float, float]], font: Any) -> Image.Image:
    w, h = PANEL
    left, top, right, bottom = MARGIN
    img = Image.new("RGB", PANEL, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 <= 1e-9 * max(abs(y0), 1e-30):  # a constant: centre it in a range of +-10 %
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 0.5, x1 + 0.5
    box = (left, top, w - right, h - bottom)
    draw.rectangle(box, outline=(160, 160, 160))
    px = left + (xs - x0) / (x1 - x0) * (box[2] - box[0])
    py = box[3] - (ys - y0) / (y1 - y0) * (box[3] - box[1])
    if len(points) == 1:
        draw.ellipse((px[0] - 2, py[0] - 2, px[0] + 2, py[0] + 2), fill=(31, 119, 180))
    else:
        draw.line(list(zip(px.tolist(), py.tolist())), fill=(31, 119, 180), width=2)
    draw.text((left, 4), f"{name}   last {_label(float(ys[-1]))}", fill=(0, 0, 0), font=font)
    draw.text((2, top - 4), _label(y1), fill=(90, 90, 90), font=font)
    draw.text((2, box[3] - 8), _label(y0), fill=(90, 90, 90), font=font)
    draw.text((left, box[3] + 3), f"step {int(x0)}", fill=(90, 90, 90), font=font)
    end = f"{int(x1)}"
    draw.text((box[2] - 6 * len(end), box[3] + 3), end, fill=(90, 90, 90), font=font)
    return img


def plot_curves(records: list[dict[str, Any]]) -> np.ndarray | None:
    """An RGB uint8 (H, W, 3) picture with one panel per figure, or None when there is nothing to draw."""
    series = curves(records)
    if not series:
        return None
    font = ImageFont.load_default()
    panels = [_panel(name, points, font) for name, points in series.items()]
    cols = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    sheet = Image.new("RGB", (cols * PANEL[0], rows * PANEL[1]), (255, 255, 255))
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % cols) * PANEL[0], (i // cols) * PANEL[1]))
    return np.asarray(sheet)
