"""Reconstruction and codebook metrics.

Images are compared in the model's value range, [-1, 1], hence `data_range=2.0` by default; pass
`data_range=1.0` for [0, 1] images or 255 for 8-bit values. Image metrics return one value per image
(shape (B,)) so callers can average over a dataset however they like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(range^2 / MSE); (B, C, H, W) -> (B,)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image; (B, C, H, W) -> (B,).

    Gaussian window 11, sigma 1.5, applied per channel without padding (only fully covered positions
    count); constants C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = `data_range`. The SSIM map is averaged
    over positions and channels. Images must be at least `window` pixels in each axis.
    """
    x, y = x.double(), y.double()
    channels = x.shape[1]
    kernel = _gaussian_window(window, sigma).to(x.device).expand(channels, 1, window, window)

    def blur(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H-window+1, W-window+1)
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).to(torch.float32)


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code frequencies in a histogram: the effective number of codes in use."""
    p = counts.double() / counts.sum().clamp(min=1)
    return torch.exp(-torch.special.xlogy(p, p).sum()).to(torch.float32)


def codebook_stats(counts: Tensor) -> tuple[Tensor, Tensor]:
    """From a histogram of code indices (n_codes,), the fraction of codes used and the perplexity."""
    usage = (counts > 0).float().mean()
    return usage, perplexity(counts)
