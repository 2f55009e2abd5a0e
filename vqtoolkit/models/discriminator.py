"""PatchGAN discriminator (pix2pix `NLayerDiscriminator`) with the reference layout `main.{k}`.

Each output logit judges one overlapping patch (70x70 pixels for n_layers=3), which pushes the decoder
towards locally realistic texture rather than a single global verdict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributed import sum_over_ranks
from ..errors import VqtError


class ActNorm(nn.Module):
    """Per-channel affine `scale * (x + loc)`, initialised from the first training batch.

    The first forward in training mode sets loc = -mean and scale = 1 / (std + 1e-6) per channel, so
    the first batch comes out normalised (Kingma & Dhariwal 2018, as the reference). Under
    torch.distributed the statistics are taken over all ranks' batches, so every rank starts alike.
    Parameters `loc`, `scale` (1, C, 1, 1) and the buffer `initialized` match the reference.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:  # x (B, C, H, W)
        flat = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)  # (C, N)
        moments = torch.stack([flat.sum(1), flat.pow(2).sum(1)])  # (2, C)
        count = torch.tensor(float(flat.shape[1]), device=x.device)
        sum_over_ranks(moments)
        sum_over_ranks(count)
        mean = moments[0] / count
        var = (moments[1] - count * mean**2) / (count - 1)  # unbiased, as torch.std
        self.loc.copy_(-mean.view(1, -1, 1, 1))
        self.scale.copy_(1.0 / (var.clamp(min=0).sqrt() + 1e-6).view(1, -1, 1, 1))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if self.training and not self.initialized.item():
            self._initialize(x)
        return self.scale * (x + self.loc)


def _weights_init(module: nn.Module) -> None:
    """The reference init: convs N(0, 0.02); batch norms weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """Image (B, in_channels, H, W) -> patch logits (B, 1, h, w).

    `n_layers` stride-2 4x4 convs (widths ndf x 1, 2, 4, 8, capped at 8), one stride-1 conv, and a
    1-channel output conv; normalised layers have no conv bias. `norm` is "actnorm" or "batchnorm"
    (the reference's default, `use_actnorm=False`, is batchnorm).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: str = "actnorm") -> None:
        super().__init__()
        norms = {"actnorm": ActNorm, "batchnorm": nn.BatchNorm2d}
        if norm not in norms:
            raise VqtError(f"loss.disc_norm = {norm!r} is unknown: expected 'actnorm' or 'batchnorm'")
        norm_layer = norms[norm]
        use_bias = norm != "batchnorm"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_weights_init)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, h, w)
        return self.main(x)
