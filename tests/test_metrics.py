import math

import numpy as np
import pytest
import torch

from vqtoolkit.metrics import codebook_stats, psnr, ssim


def test_psnr_of_known_mse():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)  # MSE 0.01
    assert psnr(x, y).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 2, rel=1e-5)
    assert psnr(x, y, data_range=1.0)[0].item() == pytest.approx(20.0, rel=1e-5)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])


def test_ssim_of_constant_images_by_hand():
    a, c = 0.2, 0.3
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)  # variances 0: luminance term only
    got = ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), a + c))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def numpy_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Direct loop over every fully covered 11x11 window of a single-channel image."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_of_shifted_image_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, size=(14, 15))
    y = x + 0.25  # constant shift: only the luminance term drops
    got = ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None]).item()
    assert got == pytest.approx(numpy_ssim(x, y, 2.0), rel=1e-5)
    noisy = x + rng.normal(0, 0.1, size=x.shape)
    got = ssim(torch.tensor(x)[None, None], torch.tensor(noisy)[None, None], data_range=1.0).item()
    assert got == pytest.approx(numpy_ssim(x, noisy, 1.0), rel=1e-5)


def test_codebook_stats_by_hand():
    usage, perplexity = codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert usage.item() == 0.5 and perplexity.item() == pytest.approx(2.0)
    usage, perplexity = codebook_stats(torch.tensor([1, 3]))
    assert usage.item() == 1.0
    assert perplexity.item() == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))
