"""Canny edge maps derived from the image or read from files.

The reference code conditions ImageNet synthesis on `skimage.feature.canny(rgb2gray(image), sigma=2)`;
this is the same detector written in torch (no new dependency): Gaussian blur (sigma 2), Sobel
gradients, non-maximum suppression, hysteresis between LOW and HIGH. Raw maps are +1 on edges and
-1 elsewhere. With `channels = 3` the map is replicated so the image VQGAN can encode it (as the
reference does); with 1 it gets a VQGAN of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import RecipeError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_image, to_tensor

from ._common import check_channels, check_size, grey_picture, paired

SIGMA = 2.0
LOW, HIGH = 0.1, 0.2
"""Hysteresis thresholds on the gradient magnitude of a [0, 1] grey image with the unscaled Sobel
kernel ([1, 2, 1] x [-1, 0, 1]): skimage's defaults for float images (10 % and 20 % of the range)."""

LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


@dataclass(frozen=True)
class EdgeOptions:
    channels: int = 1  # 1: an edge VQGAN of its own; 3: replicated, to be encoded by the image VQGAN

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise RecipeError(f"condition.channels = {self.channels!r} is invalid: expected 1 (own VQGAN) "
                              "or 3 (replicated for the image VQGAN)")


def _gaussian(grey: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, H, W), kernel truncated at 4 sigma, edge pixels repeated."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum()
    out = F.pad(grey, (radius, radius, radius, radius), mode="replicate")  # (1, 1, H + 2r, W + 2r)
    out = F.conv2d(out, k.view(1, 1, 1, -1))  # (1, 1, H + 2r, W)
    return F.conv2d(out, k.view(1, 1, -1, 1))  # (1, 1, H, W)


def canny(grey: torch.Tensor, sigma: float = SIGMA, low: float = LOW, high: float = HIGH) -> torch.Tensor:
    """Canny edges of a grey image (H, W) in [0, 1] -> bool (H, W). The 1-pixel border is never an edge."""
    g = _gaussian(grey.float()[None, None], sigma)  # (1, 1, H, W)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))[0, 0]  # (H, W), d/dcolumn
    gy = F.conv2d(padded, sobel.t().reshape(1, 1, 3, 3))[0, 0]  # (H, W), d/drow
    mag = torch.round(torch.hypot(gx, gy) * 1e5) / 1e5  # rounded: mirror-image pixels tie exactly

    # Non-maximum suppression: keep pixels larger than the neighbour behind and not smaller than the
    # one ahead along the gradient (one pixel of a tied pair), its direction rounded to 0, 45, 90
    # or 135 degrees (rows grow downwards).
    angle = torch.remainder(torch.atan2(gy, gx), torch.pi)
    sector = torch.remainder(torch.round(angle / (torch.pi / 4)), 4).long()  # (H, W)
    m = F.pad(mag[None, None], (1, 1, 1, 1))[0, 0]  # (H + 2, W + 2), zeros outside
    H, W = mag.shape

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return m[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]

    steps = [(0, 1), (1, 1), (1, 0), (1, -1)]  # neighbour offsets (dy, dx) per sector
    ahead = torch.stack([shifted(dy, dx) for dy, dx in steps])  # (4, H, W)
    behind = torch.stack([shifted(-dy, -dx) for dy, dx in steps])
    idx = sector[None]
    peak = (mag >= ahead.gather(0, idx)[0]) & (mag > behind.gather(0, idx)[0])
    border = torch.zeros_like(peak)
    border[1:-1, 1:-1] = True
    peak &= border

    # Hysteresis: weak edges survive where 8-connected, through weak edges, to a strong one.
    weak = peak & (mag >= low)
    return _connected_to(weak, peak & (mag >= high))


def _connected_to(mask: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Pixels of bool (H, W) `mask` 8-connected within it to a `seeds` pixel (seeds lie in mask).

    Connected components by min-label hooking and pointer jumping over neighbour pairs: a few
    vectorised rounds, where growing the seeds one pixel per step would take as many steps as the
    longest edge is long.
    """
    m = mask.numpy()
    H, W = m.shape
    ids = np.full((H, W), -1, np.int64)
    ids[m] = np.arange(int(m.sum()))
    pairs = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = ids[: H - dy, max(0, -dx): W - max(0, dx)]
        b = ids[dy:, max(0, dx): W + min(0, dx)]
        both = (a >= 0) & (b >= 0)
        pairs.append((a[both], b[both]))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    parent = np.arange(int(m.sum()))
    while True:
        pa, pb = parent[a], parent[b]
        low = np.minimum(pa, pb)
        before = parent.copy()
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:  # pointer jumping: every pixel points at its tree's root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    seeded = np.zeros(len(parent), bool)
    seeded[parent[ids[seeds.numpy()]]] = True
    out = np.zeros((H, W), bool)
    out[m] = seeded[parent]
    return torch.from_numpy(out)


def grey(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (H, W) luma in [0, 1] (skimage's rgb2gray weights)."""
    rgb = (image.float().clamp(-1, 1) + 1) / 2
    return (rgb * torch.tensor(LUMA).view(3, 1, 1)).sum(0)


def edge_map(edges: torch.Tensor, channels: int) -> torch.Tensor:
    """bool or [0, 1] float (H, W) -> raw (channels, H, W) in [-1, 1]."""
    return (edges.float() * 2 - 1)[None].repeat(channels, 1, 1)


def edge_f1(found: torch.Tensor, target: torch.Tensor, tolerance: int = 1) -> float:
    """F1 of two boolean edge maps (H, W) with a `tolerance`-pixel match radius; 1.0 when both are empty."""
    def near(edges: torch.Tensor) -> torch.Tensor:
        k = 2 * tolerance + 1
        return F.max_pool2d(edges[None, None].float(), k, stride=1, padding=tolerance)[0, 0] > 0

    n_found, n_target = int(found.sum()), int(target.sum())
    if n_found == 0 or n_target == 0:
        return 1.0 if n_found == n_target else 0.0
    precision = float((found & near(target)).sum()) / n_found
    recall = float((target & near(found)).sum()) / n_target
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _read_map(path: str) -> np.ndarray:
    """A file as an edge map in [0, 1] (H, W): greyscale files are maps (white = edge); colour
    files are photos, and their Canny edges are taken."""
    rgb = load_image(path, 3)  # (H, W, 3) uint8
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32) / 255
    return canny(grey(to_tensor(rgb))).numpy().astype(np.float32)


class EdgeCondition(Condition):
    name = "edge"
    description = "Canny edge maps derived from the image or read from files."
    kind = "spatial"
    Options = EdgeOptions

    def stage_channels(self, options: EdgeOptions) -> int:
        return options.channels

    def from_item(self, item: dict[str, Any], options: EdgeOptions) -> torch.Tensor:
        """Edges of a paired edge/ file when the item has one, else Canny edges of its image."""
        edges = paired(item, self.name, _read_map, mode="bilinear")
        if edges is not None:
            return edge_map(torch.from_numpy(edges), options.channels)
        image = item["image"]
        if image.shape[0] == 1:
            image = image.repeat(3, 1, 1)
        return edge_map(canny(grey(image)), options.channels)

    def read(self, spec: str, size: tuple[int, int], options: EdgeOptions) -> torch.Tensor:
        """An edge map (greyscale, white = edge) or a colour photo to detect edges in; of the sample size."""
        edges = _read_map(spec)
        check_size(edges.shape, size, spec, "edge map")
        return edge_map(torch.from_numpy(edges), options.channels)

    def render(self, raw: torch.Tensor, options: EdgeOptions) -> np.ndarray:
        check_channels(raw, options.channels, self.name)
        return grey_picture((raw.mean(0) + 1) / 2)

    def fidelity(self, images: torch.Tensor, raw: torch.Tensor, options: EdgeOptions) -> dict[str, float]:
        """edge_f1: the F1 score of each sample's Canny edges against the condition's, where an edge
        pixel within one pixel of the other map's edge counts as matched (BSDS-style tolerance)."""
        target = raw.mean(0).cpu() > 0  # (H, W) bool
        scores = []
        for image in images.cpu():
            found = canny(grey(image if image.shape[0] == 3 else image.repeat(3, 1, 1)))
            scores.append(edge_f1(found, target))
        return {"edge_f1": float(np.mean(scores))}


@hookimpl
def vqt_register_conditions(registry):
    registry.register(EdgeCondition())
