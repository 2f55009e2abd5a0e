"""quantizer.kind = "residual": two codebooks in a row (residual vector quantization).

The first codebook quantizes z, the second what the first left over, z - c1; the code is the pair,
numbered i1 * K + i2, so a model sees K^2 codes (stage 2 models those) from 2K stored vectors:

    [quantizer]
    kind = "residual"
    codes_per_stage = 32   # K: 32 x 32 = 1024 codes
    beta = 0.25            # commitment weight of each stage

The module follows vqtoolkit's `QuantizerModule` contract: `forward` returns (quantized, indices,
loss, stats), and `indices_to_quantized` gives the same map, bit for bit, in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtoolkit.errors import RecipeError
from vqtoolkit.models.quantize import CodeUsage, QuantizerModule
from vqtoolkit.quantizers import Quantizer


@dataclass(frozen=True)
class ResidualOptions:
    codes_per_stage: int = 32  # K, codes in each of the two codebooks; the model has K * K codes
    beta: float = 0.25  # commitment weight, per stage

    def __post_init__(self) -> None:
        if self.codes_per_stage < 2:
            raise RecipeError(f"quantizer.codes_per_stage = {self.codes_per_stage!r} is invalid: expected an integer >= 2")
        if self.beta < 0:
            raise RecipeError(f"quantizer.beta = {self.beta!r} is invalid: expected a number >= 0")


def nearest(codes: Tensor, z: Tensor) -> Tensor:
    """Index (B, h, w) of the row of `codes` (K, D) nearest to each position of `z` (B, D, h, w)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, D)
    dist2 = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (N, K)
    return dist2.argmin(1).view(z.shape[0], *z.shape[2:])


def lookup(codes: Tensor, indices: Tensor) -> Tensor:
    return codes[indices].permute(0, 3, 1, 2)  # (B, h, w) -> (B, D, h, w)


class ResidualVQ(QuantizerModule):
    def __init__(self, embed_dim: int, codes_per_stage: int, beta: float) -> None:
        super().__init__()
        self.embed_dim, self.k, self.beta = embed_dim, codes_per_stage, beta
        self.n_codes = codes_per_stage ** 2
        self.first = nn.Embedding(codes_per_stage, embed_dim)
        self.second = nn.Embedding(codes_per_stage, embed_dim)
        for book in (self.first, self.second):
            nn.init.uniform_(book.weight, -1.0 / codes_per_stage, 1.0 / codes_per_stage)
        self.usage = CodeUsage(self.n_codes, window=100)  # the `usage` and `perplexity` every quantizer logs

    def indices_to_quantized(self, indices: Tensor) -> Tensor:  # (B, h, w) -> (B, D, h, w)
        return lookup(self.first.weight, indices // self.k) + lookup(self.second.weight, indices % self.k)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        with torch.autocast(z.device.type, enabled=False):  # distances in fp32: bf16 ties pick wrong codes
            z = z.float()
            i1 = nearest(self.first.weight, z)
            c1 = lookup(self.first.weight, i1)
            i2 = nearest(self.second.weight, z - c1.detach())
            c2 = lookup(self.second.weight, i2)
            # Each codebook moves towards what it quantizes; the encoder commits to the sum.
            loss = F.mse_loss(c1, z.detach()) + F.mse_loss(c2, (z - c1).detach()) \
                + self.beta * F.mse_loss(z, (c1 + c2).detach())
        indices = i1 * self.k + i2
        quantized = c1 + c2
        _, stats = self.usage.observe(indices, self.training)
        # Straight-through: the value is exactly c1 + c2, the gradient reaches z unchanged.
        return quantized.detach() + (z - z.detach()), indices, loss, stats


class Residual(Quantizer):
    name = "residual"
    description = "Two codebooks in a row, the second quantizing the first's residual (K * K codes)."
    Options = ResidualOptions

    def build(self, options: ResidualOptions, embed_dim: int) -> ResidualVQ:
        return ResidualVQ(embed_dim, options.codes_per_stage, options.beta)
