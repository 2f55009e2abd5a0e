"""Normalised pixel coordinates, so sliding-window samples know where they are (FacesHQ).

The reference coordinate stage (taming `CoordStage`): each pixel holds its raster position
(row * W + column) / (H * W) in [0, 1); tokens are that map averaged over f x f cells (area
downsampling) and rounded to `n_codes` levels. With `--cond full`, `vqt sample` builds the map of
the whole --size canvas, so each window of a large sample is told where in the canvas it sits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import RecipeError, VqtError
from vqtoolkit.hookspecs import hookimpl

from ._common import check_channels, grey_picture


@dataclass(frozen=True)
class CoordinatesOptions:
    n_codes: int = 1024  # quantisation levels of the position map (tokens 0..n_codes-1)
    down_factor: int = 16  # cell size; must equal the image VQGAN's factor f, so the grids match

    def __post_init__(self) -> None:
        if isinstance(self.n_codes, bool) or self.n_codes < 2:
            raise RecipeError(f"condition.n_codes = {self.n_codes!r} is invalid: expected an integer >= 2")
        if isinstance(self.down_factor, bool) or self.down_factor < 1:
            raise RecipeError(f"condition.down_factor = {self.down_factor!r} is invalid: expected the image "
                              "VQGAN's factor f (e.g. 16)")


def position_map(height: int, width: int) -> torch.Tensor:
    """(1, H, W): raster index / (H * W), in [0, 1)."""
    return (torch.arange(height * width, dtype=torch.float64) / (height * width)).float().view(1, height, width)


class CoordinatesCondition(Condition):
    name = "coordinates"
    description = "Normalised pixel coordinates, so sliding-window samples know where they are (FacesHQ)."
    kind = "positional"
    Options = CoordinatesOptions
    has_stage = False

    def from_item(self, item: dict[str, Any], options: CoordinatesOptions) -> torch.Tensor:
        return position_map(*item["image"].shape[-2:])

    def read(self, spec: str, size: tuple[int, int], options: CoordinatesOptions) -> torch.Tensor:
        """Only `full`: the position map of the whole --size image."""
        if spec != "full":
            raise VqtError(f"the coordinates condition is computed, not read: pass --cond full (the position "
                           f"map of the --size image), not {spec!r}")
        return position_map(*size)

    def tokens(self, raw: torch.Tensor, options: CoordinatesOptions, stage: Any) -> torch.Tensor:
        """(B, 1, H, W) position maps -> (B, H/f, W/f) tokens in 0..n_codes-1."""
        check_channels(raw, 1, self.name)
        f = options.down_factor
        height, width = raw.shape[-2:]
        if raw.ndim != 4 or height % f or width % f:
            raise VqtError(f"coordinates maps of {width}x{height} are not whole {f}x{f} cells (condition."
                           f"down_factor = {f}); sizes must be multiples of the image VQGAN's factor")
        if float(raw.min()) < 0 or float(raw.max()) > 1:
            raise VqtError(f"coordinates maps must lie in [0, 1], got {float(raw.min()):.3g}..{float(raw.max()):.3g}")
        cells = F.avg_pool2d(raw.float(), f)[:, 0]  # (B, h, w): area downsampling
        return torch.round(cells * options.n_codes).long().clamp(0, options.n_codes - 1)

    def vocab_size(self, options: CoordinatesOptions, stage: Any) -> int:
        return options.n_codes

    def render(self, raw: torch.Tensor, options: CoordinatesOptions) -> np.ndarray:
        check_channels(raw, 1, self.name)
        return grey_picture(raw[0])


@hookimpl
def vqt_register_conditions(registry):
    registry.register(CoordinatesCondition())
