"""Low-resolution images (bicubic, factor 8) upscaled and encoded by a VQGAN.

As in the reference ImageNet super-resolution task, training conditions are the image shrunk by
`factor` with bicubic filtering and enlarged back, so the condition is aligned with the image and
encoded on the same grid (by a 3-channel VQGAN of its own, or by the image VQGAN itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import ImageError, RecipeError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_image, to_tensor, to_uint8

from ._common import check_channels


@dataclass(frozen=True)
class SuperresOptions:
    factor: int = 8  # how much smaller the low-resolution input is, per side

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or self.factor < 2:
            raise RecipeError(f"condition.factor = {self.factor!r} is invalid: expected an integer >= 2")


def upscale(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) -> (3, H, W) bicubic, clamped to [-1, 1]."""
    return F.interpolate(low[None].float(), size=size, mode="bicubic", align_corners=False)[0].clamp(-1, 1)


def degrade(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> the same size after a bicubic (antialiased) shrink by `factor` and back."""
    height, width = image.shape[-2:]
    small = (max(1, height // factor), max(1, width // factor))
    low = F.interpolate(image[None].float(), size=small, mode="bicubic", antialias=True, align_corners=False)
    return upscale(low[0].clamp(-1, 1), (height, width))


class SuperresCondition(Condition):
    name = "superres"
    description = "Low-resolution images (bicubic, factor 8) upscaled and encoded by a VQGAN."
    kind = "spatial"
    Options = SuperresOptions
    read_size = "any"  # --cond is the small image; read() checks it and enlarges it to --size

    def stage_channels(self, options: SuperresOptions) -> int:
        return 3

    def from_item(self, item: dict[str, Any], options: SuperresOptions) -> torch.Tensor:
        image = item["image"]
        check_channels(image, 3, self.name)
        return degrade(image, options.factor)

    def read(self, spec: str, size: tuple[int, int], options: SuperresOptions) -> torch.Tensor:
        """A low-resolution image, e.g. 128x72 for --size 1024x576 at factor 8, enlarged to --size.

        Any size up to --size is accepted (a different aspect ratio is stretched)."""
        low = load_image(spec, 3)
        h, w = low.shape[:2]
        if h > size[0] or w > size[1]:
            raise ImageError(f"low-resolution image {spec} is {w}x{h}, larger than --size {size[1]}x{size[0]}; "
                             f"give the small image (e.g. {max(1, size[1] // options.factor)}x"
                             f"{max(1, size[0] // options.factor)} at factor {options.factor})")
        return upscale(to_tensor(low), size)

    def render(self, raw: torch.Tensor, options: SuperresOptions) -> np.ndarray:
        check_channels(raw, 3, self.name)
        return to_uint8(raw)

    def fidelity(self, images: torch.Tensor, raw: torch.Tensor, options: SuperresOptions) -> dict[str, float]:
        """lowres_psnr: PSNR (dB, data range 2) between each sample, shrunk and enlarged as the input
        was, and the low-resolution input: does the sample keep what the condition shows?"""
        target = raw.float().cpu()
        scores = []
        for image in images.cpu():
            mse = float(((degrade(image, options.factor) - target) ** 2).mean())
            scores.append(10 * math.log10(4.0 / max(mse, 1e-10)))
        return {"lowres_psnr": float(np.mean(scores))}


@hookimpl
def vqt_register_conditions(registry):
    registry.register(SuperresCondition())
