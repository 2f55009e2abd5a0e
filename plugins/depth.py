"""Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN).

Each map is normalised on its own to [-1, 1] (as the reference code does), so only relative depth
matters and a metric map, a 16-bit sensor PNG and a float TIFF all work. Values are used as stored:
train and sample with the same convention (the synthetic scenes store distance, larger = farther).
A training crop is normalised by its whole map's range, as the reference normalises before it
crops: a crop of the sky then reads as far, as the same place does in a whole map at sampling time.
The range is the item's `full_range` when it has one (synthetic crops of large scenes), else the
whole paired file's. Files are read by `depth_files`: single-channel data, or the reference's
float32 packed into RGBA PNGs (D-RIN), chosen by the option `encoding`.

The option `inverse` takes 1/value first: it turns distance into disparity, the convention of the
MiDaS maps the paper's D-RIN used. Min-max normalised distance squeezes the near half of a ground
plane into a few percent of the range (distance ~ 1/row below the horizon), where a condition VQGAN
gives many rows one code; disparity grows linearly down the image, so every row keeps its own value.

The option `slope` adds a second channel, the normalised map's vertical slope. Depth alone cannot tell
the foot of an object from the ground beside it: both lie at the same depth. Their slopes differ: the
ground's depth changes from row to row, an upright surface's (and the sky's) does not, so the slope
marks where an object stands in every row it covers, not only at its outline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import DataError
from vqtoolkit.hookspecs import hookimpl

from ._common import check_channels, check_size, grey_picture, missing, paired
from .depth_files import read_depth


@dataclass(frozen=True)
class DepthOptions:
    """How depth files are read (see depth_files): "auto" tells taming's packed RGBA PNGs from
    single-channel data on evidence, "taming-rgba" reads only packed files, "plain" only
    single-channel ones (16-bit PNG, float TIFF, .npy)."""

    encoding: Literal["auto", "taming-rgba", "plain"] = "auto"
    inverse: bool = False  # 1/value before normalising: distance maps become disparity (MiDaS's convention)
    slope: bool = False  # a second channel, the vertical slope: rising on the ground, flat on upright surfaces


def normalise(depth: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """(H, W) depth -> (1, H, W) in [-1, 1] by its own min and max, or by `value_range` (lo, hi)
    of the whole map it was cut from; a constant map gives zeros."""
    depth = depth.float()
    lo, hi = (depth.min(), depth.max()) if value_range is None else (float(value_range[0]), float(value_range[1]))
    if float(hi - lo) < 1e-8:
        return torch.zeros(1, *depth.shape)
    return ((depth - lo) / (hi - lo) * 2 - 1)[None]  # (1, H, W)


def invert(depth: np.ndarray, where: str) -> np.ndarray:
    """1/depth, refusing maps with values <= 0 (no distance has an inverse there)."""
    low = float(depth.min())
    if low <= 0:
        raise DataError(f"{where}: condition.inverse = true needs depth > 0 everywhere, got a minimum of {low:g} "
                        "(set inverse = false for maps that are already disparity, or mask invalid pixels)")
    return (1.0 / depth).astype(np.float32)


SLOPE_GAIN = 64.0  # the rise over 64 rows (a training crop): a disparity ground plane reads 0.4-0.8, tanh keeps edges in (-1, 1)


def with_slope(depth: torch.Tensor, options: DepthOptions) -> torch.Tensor:
    """(1, H, W) normalised depth -> (2, H, W) with tanh(SLOPE_GAIN · d depth/d row) when `options.slope`
    (central differences over the map with its edge rows repeated)."""
    if not options.slope:
        return depth
    padded = torch.cat([depth[:, :1], depth, depth[:, -1:]], dim=1)
    slope = torch.tanh(SLOPE_GAIN * (padded[:, 2:] - padded[:, :-2]) / 2)
    return torch.cat([depth, slope])


class DepthCondition(Condition):
    name = "depth"
    description = "Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN)."
    kind = "spatial"
    Options = DepthOptions

    def stage_channels(self, options: DepthOptions) -> int:
        return 2 if options.slope else 1

    def from_item(self, item: dict[str, Any], options: DepthOptions) -> torch.Tensor:
        ranges: list[tuple[float, float]] = []  # a paired file's whole range, seen as it is loaded

        def load(path: str) -> np.ndarray:
            whole = read_depth(path, options.encoding)
            ranges.append((float(whole.min()), float(whole.max())))
            return whole

        depth = paired(item, self.name, load, mode="bilinear")
        if depth is None:
            raise missing(item, self.name, "depth")
        full = item.get("full_range", {}).get(self.name)
        value_range = tuple(float(v) for v in full) if full is not None else (ranges[0] if ranges else None)
        depth = np.asarray(depth, dtype=np.float32)
        if options.inverse:
            where = str(item.get("name", "item"))
            depth = invert(depth, where)
            if value_range is not None:
                lo, hi = invert(np.asarray(value_range, np.float32), f"{where}: its depth range")
                value_range = (float(hi), float(lo))
        return with_slope(normalise(torch.from_numpy(depth), value_range), options)

    def read(self, spec: str, size: tuple[int, int], options: DepthOptions) -> torch.Tensor:
        """A depth map: 16-bit PNG, float TIFF, .npy (H, W) or taming's packed RGBA PNG, of exactly the
        sample size."""
        depth = read_depth(spec, options.encoding)
        check_size(depth.shape, size, spec, "depth map")
        return with_slope(normalise(torch.from_numpy(invert(depth, spec) if options.inverse else depth)), options)

    def render(self, raw: torch.Tensor, options: DepthOptions) -> np.ndarray:
        """Near bright: small values bright for distance maps such as the synthetic scenes', large
        ones with `inverse` (disparity). The slope channel is not drawn."""
        check_channels(raw, self.stage_channels(options), self.name)
        return grey_picture((1 + raw[0]) / 2 if options.inverse else (1 - raw[0]) / 2)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(DepthCondition())
