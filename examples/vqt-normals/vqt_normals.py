"""Surface normals as a vqtoolkit condition: an example third-party plugin.

Normals are derived from depth: the depth map, min-max normalised to [0, 1] and scaled by the image
width (so a depth range spans about one image width), is a height field z(x, y) whose unit normal
is (-dz/dx, -dz/dy, 1) / norm. The raw condition is that vector per pixel, (3, H, W) in [-1, 1],
encoded by a 3-channel VQGAN; it is drawn the usual way, RGB = (n + 1) / 2.

It uses vqtoolkit's public API only: the Condition base class, the hook marker, errors, image
readers and `vqtoolkit.data.crop_like` for paired folders (a `depth/` folder beside `images/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqtoolkit.conditions import Condition
from vqtoolkit.data import paired_array
from vqtoolkit.errors import DataError, ImageError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_array, load_image, to_tensor, to_uint8

DEPTH_SUFFIXES = (".npy", ".tif", ".tiff")


def normals(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) depth, any units -> (3, H, W) unit normals in [-1, 1] (x right, y down, z to the viewer)."""
    depth = depth.float()
    span = float(depth.max() - depth.min())
    height = (depth - depth.min()) / span * depth.shape[1] if span > 0 else torch.zeros_like(depth)
    dz_dy, dz_dx = torch.gradient(height)  # (H, W) each, central differences
    n = torch.stack([-dz_dx, -dz_dy, torch.ones_like(height)])  # (3, H, W)
    return n / n.norm(dim=0, keepdim=True)


class NormalsCondition(Condition):
    name = "normals"
    description = "Surface normals derived from depth, encoded by a 3-channel VQGAN."
    kind = "spatial"

    def stage_channels(self, options: Any) -> int:
        return 3

    def from_item(self, item: dict[str, Any], options: Any) -> torch.Tensor:
        depth = paired_array(item, "depth", load_array, mode="bilinear")  # synthetic scenes or a depth/ folder
        if depth is None:
            raise DataError(f"dataset item {item.get('name', '?')!r} has no depth to derive normals from: use "
                            "data.source = \"synthetic\", or \"paired\" with a depth/ folder")
        return normals(torch.from_numpy(depth))

    def read(self, spec: str, size: tuple[int, int], options: Any) -> torch.Tensor:
        """A depth map (.npy, float TIFF) to derive normals from, or an RGB normal map (.png, ...)."""
        if Path(spec).suffix.lower() in DEPTH_SUFFIXES:
            array = load_array(spec)
            raw = normals(torch.from_numpy(array))
        else:
            array = load_image(spec, channels=3)
            raw = to_tensor(array)
            raw = raw / raw.norm(dim=0, keepdim=True).clamp_min(1e-6)
        if tuple(array.shape[:2]) != tuple(size):
            raise ImageError(f"normals input {spec} is {array.shape[1]}x{array.shape[0]}; expected the sample "
                             f"size {size[1]}x{size[0]}")
        return raw

    def render(self, raw: torch.Tensor, options: Any) -> np.ndarray:
        return to_uint8(raw)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(NormalsCondition())
