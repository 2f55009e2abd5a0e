"""Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN).

Each map is normalised on its own to [-1, 1] (as the reference code does), so only relative depth
matters and a metric map, a 16-bit sensor PNG and a float TIFF all work. Values are used as stored:
train and sample with the same convention (the synthetic scenes store distance, larger = farther).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_array

from ._common import check_channels, check_size, grey_picture, missing, paired


def normalise(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) depth -> (1, H, W) in [-1, 1] by its own min and max; a constant map gives zeros."""
    depth = depth.float()
    lo, hi = depth.min(), depth.max()
    if float(hi - lo) < 1e-8:
        return torch.zeros(1, *depth.shape)
    return ((depth - lo) / (hi - lo) * 2 - 1)[None]  # (1, H, W)


class DepthCondition(Condition):
    name = "depth"
    description = "Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN)."
    kind = "spatial"

    def stage_channels(self, options: Any) -> int:
        return 1

    def from_item(self, item: dict[str, Any], options: Any) -> torch.Tensor:
        depth = paired(item, self.name, load_array, mode="bilinear")
        if depth is None:
            raise missing(item, self.name, "depth")
        return normalise(torch.from_numpy(depth))

    def read(self, spec: str, size: tuple[int, int], options: Any) -> torch.Tensor:
        """A depth map: 16-bit PNG, float TIFF or .npy (H, W), of exactly the sample size."""
        depth = load_array(spec)
        check_size(depth.shape, size, spec, "depth map")
        return normalise(torch.from_numpy(depth))

    def render(self, raw: torch.Tensor, options: Any) -> np.ndarray:
        """Small values bright: near = bright for distance maps such as the synthetic scenes'."""
        check_channels(raw, 1, self.name)
        return grey_picture((1 - raw[0]) / 2)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(DepthCondition())
