"""Held-out PSNR against wall-clock time for stage-1 recipes, trained side by side on one machine.

Each recipe trains as `vqt train-stage1` trains it, with its held-out figures logged every
`--every` steps; one after the other, with the same threads. Every model is then scored by `vqt
eval` on the same held-out sets: whole 64 px scenes of both synthetic worlds and 64 px crops of
1024x576 graded scenes. Prints one JSON object and writes a PNG of PSNR (own held-out set) against
seconds, one line per recipe.

    python benchmarks/stage1_recipe.py [--recipes A.toml B.toml ...] [--set k=v ...] [--out DIR]

Defaults: benchmarks/recipes/quickstart-v1.toml (the quick start before issue 14) and
recipes/quickstart.toml. `--set` applies to every recipe (e.g. loss.disc_start=100000 for GAN off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
VQT = [sys.executable, "-m", "vqtoolkit.cli"]
HELD_OUT = {  # name -> [data] of an eval recipe
    "graded_scenes": 'source = "synthetic"\nsize = 64\nval_n = 256\nworld = "graded"\n',
    "random_scenes": 'source = "synthetic"\nsize = 64\nval_n = 256\nworld = "random"\n',
    "graded_crops": 'source = "synthetic"\nsize = 64\nval_n = 256\nscene_size = [1024, 576]\nworld = "graded"\n',
}
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def train(recipe: Path, out: Path, every: int, sets: list[str]) -> list[tuple[float, float]]:
    """Train; (seconds, held-out PSNR) at each logged held-out step."""
    extra = [a for s in sets + [f"train.sample_every={every}"] for a in ("--set", s)]
    subprocess.run(VQT + ["train-stage1", str(recipe), "--out", str(out), "--force", *extra], check=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["step"]: r["time"] for r in records if "time" in r}
    points = [(seconds.get(r["step"], 0.0), r["val_psnr"]) for r in records if "val_psnr" in r]
    return points


def evaluate(model: Path, folder: Path) -> dict[str, dict[str, float]]:
    figures = {}
    for name, data in HELD_OUT.items():
        recipe = folder / f"{name}.toml"
        recipe.write_text(f"[data]\n{data}")
        out = subprocess.run(VQT + ["eval", str(recipe), "--model", str(model), "--json", "--force",
                                    "--grid", str(model.parent / f"eval-{name}.png")],
                             check=True, capture_output=True, text=True).stdout
        f = json.loads(out)
        figures[name] = {"psnr": round(f["psnr"], 2), "codebook_usage": round(f["codebook_usage"], 4)}
    return figures


def plot(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    w, h, left, top, right, bottom = 640, 360, 52, 28, 14, 34
    img = Image.new("RGB", (w, h), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in series.values() for _, y in pts] or [0.0, 1.0]
    x1, y0, y1 = max(xs), min(ys) - 0.5, max(ys) + 0.5
    box = (left, top, w - right, h - bottom)
    draw.rectangle(box, outline=(160, 160, 160))

    def at(x: float, y: float) -> tuple[float, float]:
        return (box[0] + x / x1 * (box[2] - box[0]), box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))

    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(pts) > 1:
            draw.line([at(x, y) for x, y in pts], fill=colour, width=2)
        for x, y in pts:
            cx, cy = at(x, y)
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=colour)
        draw.text((left + 8, top + 6 + 12 * i), f"{name}: {pts[-1][1]:.2f} dB at {pts[-1][0]:.0f} s" if pts else name,
                  fill=colour, font=font)
    draw.text((4, 8), "held-out PSNR (dB) of each recipe's own held-out set", fill=(0, 0, 0), font=font)
    draw.text((2, top - 2), f"{y1:.1f}", fill=(90, 90, 90), font=font)
    draw.text((2, box[3] - 8), f"{y0:.1f}", fill=(90, 90, 90), font=font)
    draw.text((left, box[3] + 4), "0 s", fill=(90, 90, 90), font=font)
    draw.text((box[2] - 60, box[3] + 4), f"{x1:.0f} s", fill=(90, 90, 90), font=font)
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", type=Path,
                        default=[ROOT / "benchmarks/recipes/quickstart-v1.toml", ROOT / "recipes/quickstart.toml"])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--every", type=int, default=50, help="steps between held-out PSNR points")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-stage1-recipe"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    series, results = {}, {}
    for recipe in args.recipes:
        run = args.out / recipe.stem
        series[recipe.stem] = train(recipe, run, args.every, args.sets)
        results[recipe.stem] = {"seconds": series[recipe.stem][-1][0], "own_held_out_psnr": series[recipe.stem][-1][1],
                                **evaluate(run / "last.safetensors", args.out)}
    plot(series, args.out / "psnr_vs_time.png")
    print(json.dumps({"threads": os.environ.get("OMP_NUM_THREADS", "default"), "sets": args.sets,
                      "results": results, "curve": str(args.out / "psnr_vs_time.png")}, indent=1))


if __name__ == "__main__":
    main()
