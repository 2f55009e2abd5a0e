"""Does a depth-conditioned sample follow its scene? Layout agreement with the scene's segmentation.

Prints one JSON object per sample. `vqt scene --world graded` writes a scene's depth map beside its
segmentation; a model sampled from that depth map should put sky, ground and objects where the
segmentation has them. Each pixel of the sample is classed by colour as the graded world paints
it: "object" when red stands above green and blue by more than 0.12 (red discs, brown boxes,
yellow triangles, skin), else "sky" when blue is at least green, else "ground". The figures:
the share of pixels whose class matches the segmentation's (sky, ground, any object), the share
of sky and of ground pixels classed right, and the objects' intersection over union, recall and
precision. The scene's own image.png scores about 0.9 agreement and 0.8 object IoU: hazy far
ground reads as sky and the person's blue clothes as ground.

    vqt scene --seed 7 --world graded -o scene
    vqt sample --model runs/quickstart-depth-local/last.safetensors --cond scene/depth.png ... -o out.png
    python benchmarks/depth_layout.py scene out.png [more.png ...]

A grid.png (condition | samples) is read as its rightmost scene-sized panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SKY, GROUND, OBJECT = 0, 1, 2
RED_ABOVE = 0.12  # how far red must exceed green and blue for an object colour


def classes(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> (H, W) SKY, GROUND or OBJECT by colour."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.where(r - np.maximum(g, b) > RED_ABOVE, OBJECT, np.where(b >= g, SKY, GROUND))


def layout(truth: np.ndarray, sample: np.ndarray) -> dict[str, float]:
    """Agreement of sample classes with true classes, both (H, W)."""
    t_obj, s_obj = truth == OBJECT, sample == OBJECT
    both = float((t_obj & s_obj).sum())
    return {
        "agreement": float((sample == truth).mean()),
        "sky": float((sample[truth == SKY] == SKY).mean()),
        "ground": float((sample[truth == GROUND] == GROUND).mean()),
        "object_iou": both / max(1.0, float((t_obj | s_obj).sum())),
        "object_recall": both / max(1.0, float(t_obj.sum())),
        "object_precision": both / max(1.0, float(s_obj.sum())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scene", type=Path, help="folder written by `vqt scene` (segmentation.png)")
    parser.add_argument("samples", type=Path, nargs="+", help="sample PNGs of the scene's size, or grid.png files")
    args = parser.parse_args()
    seg_path = args.scene / "segmentation.png"
    if not seg_path.is_file():
        sys.exit(f"{seg_path} does not exist: pass the folder `vqt scene -o FOLDER` wrote")
    seg = np.asarray(Image.open(seg_path)).astype(np.int64)
    truth = np.where(seg == 0, SKY, np.where(seg == 1, GROUND, OBJECT))  # labels: sky, ground, then objects
    height, width = truth.shape
    for path in args.samples:
        try:
            rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        except (OSError, ValueError) as e:
            sys.exit(f"{path} cannot be read as an image: {e}")
        pad = (rgb.shape[0] - height) // 2  # a grid's border around its panels
        if pad < 0 or rgb.shape[1] < width + 2 * pad:
            sys.exit(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}; expected the scene's {width}x{height} "
                     "(or a grid.png whose last panel is)")
        right = rgb.shape[1] - pad
        figures = layout(truth, classes(rgb[pad:pad + height, right - width:right]))
        print(json.dumps({"sample": str(path), **{k: round(v, 3) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
