"""Editing code grids: inpainting (resample the masked codes of an image) and outpainting (grow a
canvas around an image's codes), with the sliding-window sampler's windows.

"Conditioned on everything known" has the meaning a unidirectional transformer allows: a masked code
sees the condition tokens of its window and every code before it in the window's raster order, kept
or already resampled. Kept codes after it (to its right, and in the rows below) shape it only
through the condition; they cannot enter the context of a model that reads left to right.

Local-attention models edit with their own sampler (`sampling_local.sample_local` with codes and a
mask): every position is run in raster order, only the masked codes are drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .anchors import anchor_offset
from .errors import ImageError, VqtError
from .images import check_size, load_image, to_tensor
from .models.transformer import GPT
from .sampling import (PrefixForWindow, Progress, WindowCaches, check_prefix, check_sliding, check_window_fits,
                       eval_mode, sample_logits, window_context, window_start)

MASK_THRESHOLD = 128
"""A mask pixel is "resample" when its grey value (ITU-R 601 luma of RGB) is at least this."""


def read_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """`--mask PATH` as a bool (H, W) tensor, True where white; it must be `size` (H, W), the init's."""
    try:
        grey = load_image(path, channels=1)[:, :, 0]  # (H, W) uint8
    except ImageError as e:
        raise ImageError(f"--mask: {e}") from None
    if grey.shape != tuple(size):
        raise ImageError(f"--mask {path} is {grey.shape[1]}x{grey.shape[0]} pixels but the --init image is "
                         f"{size[1]}x{size[0]}; the mask must have the init image's size")
    return torch.from_numpy(np.ascontiguousarray(grey >= MASK_THRESHOLD))


def read_init(path: str | Path, factor: int, size: tuple[int, int] | None, channels: int = 3) -> torch.Tensor:
    """`--init PATH` as (C, h, w) in [-1, 1]: each side a multiple of the model's factor and no larger
    than `size` (H, W), the canvas of `--size` (None: the init's own size)."""
    arr = load_image(path, channels=channels)  # (h, w, C)
    h, w = arr.shape[:2]
    check_size(h, w, factor, name=f"--init {path}", remedy="crop or pad it to such a size first")
    if size is not None and (h > size[0] or w > size[1]):
        raise ImageError(f"--init {path} is {w}x{h} pixels, larger than --size {size[1]}x{size[0]}; "
                         "outpainting needs a canvas at least as large on both sides")
    return to_tensor(arr)


def code_mask(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask (H, W) -> code mask (H/f, W/f): a code is resampled when any pixel of its f×f cell
    is masked, so a mask never leaves part of a masked region unchanged."""
    H, W = pixels.shape
    if H % factor or W % factor:
        raise ImageError(f"a {W}x{H} mask does not divide into the model's {factor}x{factor} code cells")
    return pixels.reshape(H // factor, factor, W // factor, factor).any(dim=3).any(dim=1)  # (h, w)


def place(codes: torch.Tensor, mask: torch.Tensor | None, grid: tuple[int, int],
          anchor: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
    """Put an image's codes (h, w) at `anchor` on a canvas `grid` (H, W) -> (codes, mask) (H, W).

    The mask is True where codes are to be sampled: the whole new area, and inside the image the
    codes of `mask` (h, w) (None: none of them)."""
    top, left = anchor_offset(tuple(codes.shape), grid, anchor)
    h, w = codes.shape
    canvas = torch.zeros(grid, dtype=torch.long, device=codes.device)  # (H, W); zeros are never read
    resample = torch.ones(grid, dtype=torch.bool, device=codes.device)  # (H, W)
    canvas[top:top + h, left:left + w] = codes
    inner = torch.zeros_like(codes, dtype=torch.bool) if mask is None else mask.to(codes.device)
    if inner.shape != codes.shape:
        raise VqtError(f"the mask covers {inner.shape[1]}x{inner.shape[0]} codes but the image has {w}x{h}")
    resample[top:top + h, left:left + w] = inner
    return canvas, resample


def sample_masked(
    gpt: GPT,
    prefix_for_window: PrefixForWindow,
    codes: torch.Tensor,
    mask: torch.Tensor,
    window: tuple[int, int],
    *,
    stride: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_codes: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Resample the codes (B, H, W) where `mask` (H, W) is True, in raster order; the rest are kept
    bit for bit. Returns a new (B, H, W) tensor.

    Each masked code is drawn in the window `sample_sliding` uses for it at this `stride` (top
    ``window_start(i, H, h)``, left from the placement of columns [a, a + stride) that holds it), after
    the window's context up to it: the same computation as sample_sliding, minus the codes that are
    kept. A placement with nothing to resample costs nothing; one with several masked codes runs one
    context forward, then feeds the codes between consecutive targets through the KV cache. With a
    mask of everything this is `sample_sliding`, token for token.
    """
    B, H, W = codes.shape
    h, w = window
    check_sliding((H, W), window, stride)
    if tuple(mask.shape) != (H, W) or mask.dtype != torch.bool:
        raise VqtError(f"mask must be a bool ({H}, {W}) tensor, as the code grid, got {mask.dtype} {tuple(mask.shape)}")
    rows = mask.tolist()
    total, done = sum(map(sum, rows)), 0
    idx = codes.clone()  # (B, H, W)
    caches: WindowCaches | None = None
    with eval_mode(gpt):
        for i in range(H):
            top = window_start(i, H, h)
            for a in range(0, W, stride):
                targets = [j for j in range(a, min(a + stride, W)) if rows[i][j]]
                if not targets:
                    continue
                left = window_start(a + stride // 2, W, w)
                prefix = prefix_for_window(top, left)
                check_prefix(prefix, B)
                if caches is None:
                    check_window_fits(gpt, prefix, window)
                    caches = WindowCaches(gpt, B, prefix.shape[1] + h * w - 1)
                cache = caches.get(top, left)
                context = window_context(prefix, idx, i, top, left, targets[0], w)  # (B, n)
                logits = gpt(context[:, cache.length:], cache)[:, -1]  # (B, V)
                for j, following in zip(targets, targets[1:] + [None]):
                    idx[:, i, j] = sample_logits(logits, temperature, top_k, top_p, generator, n_codes)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    if following is not None:  # the new code, then the kept ones up to the next target
                        logits = gpt(idx[:, i, j:following], cache)[:, -1]  # (B, V)
    return idx
