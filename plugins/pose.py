"""COCO-17 keypoints rendered to a limb map and encoded by a pose VQGAN (DeepFashion).

A limb map draws each of COCO's 19 limbs (vqtoolkit.synthetic.COCO_SKELETON) whose two keypoints
are labelled (visibility > 0) as a line of its own colour on black: 3 channels in [-1, 1], so the
picture is the raw map. Lines are max(1, min(H, W) / 64) pixels in radius.

`vqt sample --cond` takes a `.json` of keypoints in pixels of the --size image (x = column,
y = row), in any of these forms:
  [x, y, v, x, y, v, ...]  (51 numbers)      [[x, y, v], ...]  (17 triples)
  {"keypoints": <either>, "width": W, "height": H}           one person
  {"annotations": [{"keypoints": <either>}, ...], "width": W, "height": H}   several people
With "width" and "height", coordinates are in pixels of an image of that size and are scaled to
--size. A pre-rendered limb map (.png of exactly the --size) is accepted as well.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqtoolkit.conditions import Condition
from vqtoolkit.data import crop_like
from vqtoolkit.errors import ImageError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_image, read_bytes, to_tensor, to_uint8
from vqtoolkit_plugins.synthetic.render import COCO_SKELETON, flip_pose

from ._common import check_channels, check_size, hue_colours, missing

N_KEYPOINTS = 17
LIMB_COLOURS = hue_colours(len(COCO_SKELETON))  # (19, 3) in [0, 1]


def render_limbs(people: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    """Keypoints (17, 3) per person, in pixels -> limb map (3, H, W) in [-1, 1] (black background)."""
    canvas = np.zeros((height, width, 3), np.float32)
    radius = max(1.0, min(height, width) / 64)
    for kp in people:
        for (i, j), colour in zip(COCO_SKELETON, LIMB_COLOURS):
            if kp[i, 2] <= 0 or kp[j, 2] <= 0:
                continue
            a, d = kp[i, :2].astype(np.float64), (kp[j, :2] - kp[i, :2]).astype(np.float64)
            x0, x1 = math.floor(min(kp[i, 0], kp[j, 0]) - radius), math.ceil(max(kp[i, 0], kp[j, 0]) + radius)
            y0, y1 = math.floor(min(kp[i, 1], kp[j, 1]) - radius), math.ceil(max(kp[i, 1], kp[j, 1]) + radius)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            ys, xs = np.mgrid[y0:y1, x0:x1]  # (h, w) each
            px, py = xs - a[0], ys - a[1]
            t = np.clip((px * d[0] + py * d[1]) / max(d @ d, 1e-9), 0, 1)
            on = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 <= radius**2  # (h, w)
            canvas[y0:y1, x0:x1][on] = colour
    return torch.from_numpy(canvas).permute(2, 0, 1) * 2 - 1  # (3, H, W)


def _person(value: Any, path: str) -> np.ndarray:
    """One person's keypoints from 51 numbers or 17 triples -> float (17, 3)."""
    if not isinstance(value, list):
        raise ImageError(f"pose file {path}: keypoints must be a list, got {type(value).__name__}")
    flat = value
    if value and all(isinstance(t, list) for t in value):
        bad = next((t for t in value if len(t) != 3), None)
        if bad is not None:
            raise ImageError(f"pose file {path}: keypoint triples must be [x, y, v]; got {bad}")
        flat = [v for triple in value for v in triple]
    if len(flat) != 3 * N_KEYPOINTS:
        raise ImageError(f"pose file {path}: expected {N_KEYPOINTS} COCO keypoints as [x, y, v] "
                         f"(51 numbers), got {len(flat)} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in flat):
        raise ImageError(f"pose file {path}: keypoints must be finite numbers")
    return np.asarray(flat, np.float32).reshape(N_KEYPOINTS, 3)


def read_keypoints(path: str, size: tuple[int, int]) -> list[np.ndarray]:
    """The people of a keypoint .json, in pixels of an image of `size` (H, W)."""
    try:
        data = json.loads(read_bytes(path).decode())
    except FileNotFoundError:
        raise ImageError(f"pose file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImageError(f"pose file {path} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ImageError(f"pose file {path} is not valid JSON: {e}") from None
    scale = np.ones(2, np.float32)
    if isinstance(data, dict):
        if "width" in data or "height" in data:
            w, h = data.get("width"), data.get("height")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
                raise ImageError(f"pose file {path}: \"width\" and \"height\" must both be positive numbers, "
                                 f"got {w!r} and {h!r}")
            scale = np.array([size[1] / w, size[0] / h], np.float32)
        if "keypoints" in data:
            people = [data["keypoints"]]
        elif isinstance(data.get("annotations"), list) and all(
                isinstance(a, dict) and "keypoints" in a for a in data["annotations"]):
            people = [a["keypoints"] for a in data["annotations"]]
        else:
            raise ImageError(f"pose file {path}: a JSON object needs \"keypoints\" or \"annotations\" "
                             "(a list of objects with \"keypoints\")")
    else:
        people = [data]
    out = []
    for person in people:
        kp = _person(person, path)
        kp[:, :2] *= scale
        out.append(kp)
    return out


def _paired_pose(item: dict[str, Any], path: str) -> torch.Tensor:
    """A paired pose file (.json, or a rendered .png) cut like the item's image."""
    h, w, nh, nw, top, left, flip, size = (int(v) for v in item["crop"])
    if Path(path).suffix.lower() != ".json":
        limbs = crop_like(load_image(path, 3), item["crop"], mode="nearest", what=f"pose file {path}")
        return to_tensor(limbs)
    people = []
    for kp in read_keypoints(path, (h, w)):
        kp = kp.copy()  # pixel centres: x -> (x + 0.5) * nw / w - 0.5, then shifted by the crop
        kp[:, 0] = (kp[:, 0] + 0.5) * nw / w - 0.5 - left
        kp[:, 1] = (kp[:, 1] + 0.5) * nh / h - 0.5 - top
        people.append(flip_pose(kp, size) if flip else kp)
    return render_limbs(people, size, size)


class PoseCondition(Condition):
    name = "pose"
    description = "COCO-17 keypoints rendered to a limb map and encoded by a pose VQGAN (DeepFashion)."
    kind = "spatial"

    def stage_channels(self, options: Any) -> int:
        return 3

    def from_item(self, item: dict[str, Any], options: Any) -> torch.Tensor:
        height, width = item["image"].shape[-2:]
        value = item.get("paired", {}).get(self.name)
        if value is None:
            raise missing(item, self.name, "pose")
        if isinstance(value, np.ndarray):  # keypoints (17, 3) already in the image's pixels (synthetic scenes)
            return render_limbs([value], height, width)
        return _paired_pose(item, value)

    def read(self, spec: str, size: tuple[int, int], options: Any) -> torch.Tensor:
        """A keypoint .json (see the module docstring), or a limb-map image of exactly the sample size."""
        if Path(spec).suffix.lower() == ".json":
            return render_limbs(read_keypoints(spec, size), *size)
        limbs = load_image(spec, 3)
        check_size(limbs.shape[:2], size, spec, "pose map")
        return to_tensor(limbs)

    def render(self, raw: torch.Tensor, options: Any) -> np.ndarray:
        check_channels(raw, 3, self.name)
        return to_uint8(raw)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(PoseCondition())

