"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

A 1x1 convolution projects the embed_dim channels down to one channel per entry of `levels`; each is
bounded to its level count, rounded (straight-through gradient), scaled into [-1, 1] and projected
back up. The codebook is implicit: the grid of all level combinations, prod(levels) codes, every one
reachable, so there is no codebook loss and no code dies. An index is the mixed-radix number whose
digits are the rounded values (digit i counts in base levels[i]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .quantize import CodeUsage, QuantizerModule

_EPS = 1e-3  # keeps the bounded values strictly inside the outermost rounding cells


class FSQuantizer(QuantizerModule):
    """Finite scalar quantizer over `levels` (e.g. [8, 5, 5, 5]: 1000 codes).

    Params `proj_in` (embed_dim -> len(levels)) and `proj_out` (back). Dimension i takes the integer
    values -(L // 2) .. L - 1 - L // 2 for L = levels[i] (for even L the grid is shifted by half a level,
    as the paper's bound), divided by L // 2, so codes lie in [-1, 1].
    """

    def __init__(self, levels: tuple[int, ...], embed_dim: int, usage_window: int = 100) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.n_codes = math.prod(self.levels)
        self.embed_dim = embed_dim
        self.proj_in = nn.Conv2d(embed_dim, len(self.levels), 1)
        self.proj_out = nn.Conv2d(len(self.levels), embed_dim, 1)
        levels_t = torch.tensor(self.levels, dtype=torch.long)
        # Constants, rebuilt from `levels` (stored in the bundle's config), so not saved with the weights.
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.cat([levels_t.new_ones(1), levels_t[:-1]]), 0),
                             persistent=False)
        self.usage_tracker = CodeUsage(self.n_codes, usage_window)

    def _bound(self, z: Tensor) -> Tensor:  # (B, d, h, w) -> values within each dimension's rounding range
        levels = self._levels.view(1, -1, 1, 1).float()
        half = (levels - 1) * (1 - _EPS) / 2
        offset = (self._levels.view(1, -1, 1, 1) % 2 == 0).float() * 0.5  # even levels: a half-level shift
        shift = torch.atanh(offset / half)  # so that bound(0) = 0
        return torch.tanh(z + shift) * half - offset

    def _codes(self, indices: Tensor) -> Tensor:  # (B, h, w) long -> (B, d, h, w) in [-1, 1]
        digits = (indices.unsqueeze(1) // self._basis.view(1, -1, 1, 1)) % self._levels.view(1, -1, 1, 1)
        half_width = (self._levels // 2).view(1, -1, 1, 1)
        return (digits - half_width).float() / half_width.float()

    def indices_to_quantized(self, indices: Tensor) -> Tensor:  # (B, h, w) long -> (B, D, h, w)
        return self.proj_out(self._codes(indices))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """z (B, D, h, w) -> (quantized (B, D, h, w), indices (B, h, w), loss 0, stats)."""
        z_e = self.proj_in(z)
        with torch.autocast(device_type=z.device.type, enabled=False):  # rounding in fp32, as VQ's lookup
            bounded = self._bound(z_e.float())  # (B, d, h, w)
            digits = torch.round(bounded).long() + (self._levels // 2).view(1, -1, 1, 1)
            indices = (digits * self._basis.view(1, -1, 1, 1)).sum(1)  # (B, h, w)
            scaled = bounded / (self._levels // 2).view(1, -1, 1, 1).float()
            # Straight-through: the value is exactly the code of `indices` (x - x == 0), so eval-mode
            # outputs equal indices_to_quantized; the gradient reaches the bounded values unchanged.
            codes = self._codes(indices) + (scaled - scaled.detach())
        _, stats = self.usage_tracker.observe(indices, self.training)
        return self.proj_out(codes), indices, z.new_zeros((), dtype=torch.float32), stats
