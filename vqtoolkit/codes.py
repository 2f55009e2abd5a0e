"""Code-index files: `.npy` grids of codebook indices, and encoding/decoding image files to them.

`vqt encode` writes (h, w) int arrays; `vqt decode` reads (h, w) or (N, h, w) ones. Indices are checked
against the model's codebook on reading, so codes from another model fail with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ImageError
from .fileio import all_or_nothing, check_new
from .images import (PathLike, atomic_save, check_size, crop_or_pad_to_multiple, load_image, load_npy,
                     save_png, to_tensor, to_uint8)
from .stage1 import Stage1Model


def save_codes(indices: np.ndarray, path: PathLike, force: bool = False) -> Path:
    """Atomically write code indices (h, w) or (N, h, w) as a .npy file.

    Stored as int32 when every value fits (all practical codebooks), halving the size of int64.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise ImageError(f"codes file {path} must end in .npy")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu" or indices.ndim not in (2, 3) or indices.size == 0:
        raise ValueError(
            f"codes must be non-empty integers (h, w) or (N, h, w), got {indices.dtype} {indices.shape}"
        )
    if indices.min() < 0:
        raise ValueError(f"codes must be non-negative, got {int(indices.min())}")
    dtype = np.int32 if indices.max() <= np.iinfo(np.int32).max else np.int64
    data = np.ascontiguousarray(indices, dtype=dtype)
    return atomic_save(path, force, lambda f: np.save(f, data, allow_pickle=False))


def load_codes(path: PathLike, n_codes: int | None = None) -> np.ndarray:
    """Read a codes .npy as int64 (h, w) or (N, h, w), checking every index against `n_codes`."""
    path = Path(path)
    arr = load_npy(path)
    if arr.dtype.kind not in "iu":
        raise ImageError(f"codes file {path} has dtype {arr.dtype}; expected integer code indices")
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageError(f"codes file {path} has shape {arr.shape}; expected (h, w) or (N, h, w)")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        where = tuple(int(i) for i in np.unravel_index(int(arr.argmin()), arr.shape))
        raise ImageError(f"codes file {path} has negative index {lo} at {where}")
    if n_codes is not None and hi >= n_codes:
        where = tuple(int(i) for i in np.unravel_index(int(arr.argmax()), arr.shape))
        raise ImageError(
            f"codes file {path} has index {hi} at {where}, but the model's codebook has {n_codes} "
            f"codes (0..{n_codes - 1}); were these codes made by a different model?"
        )
    return arr


def encode_files(images: list[str], outputs: list[Path], model_path: str | Path, *,
                 fit: str | None = None, device: str = "cpu", progress: Any = None,
                 force: bool = False) -> None:
    """Encode each image file to a `.npy` grid of indices (h×w), one output per image."""
    model = Stage1Model.load(model_path, device)
    channels = model.model_config.in_channels
    with all_or_nothing() as written:
        for src, dst in zip(images, outputs):
            arr = load_image(src, channels=channels)
            if fit:
                arr = crop_or_pad_to_multiple(arr, model.factor, mode=fit)
            else:
                check_size(arr.shape[0], arr.shape[1], model.factor, name=src)
            codes = model.encode(to_tensor(arr)[None])[0]  # (h, w)
            written.append(save_codes(codes.cpu().numpy(), dst, force=force))
            if progress is not None:
                progress(1)


def decode_files(codes: list[str], outputs: list[Path], model_path: str | Path, *,
                 device: str = "cpu", progress: Any = None, force: bool = False) -> int:
    """Decode `.npy` code grids to PNG; an N×h×w file becomes OUT-stem_0000.png, ... Returns the count."""
    model = Stage1Model.load(model_path, device)
    with all_or_nothing() as written:
        for src, dst in zip(codes, outputs):
            grid = load_codes(src, n_codes=model.n_codes)
            batch = torch.from_numpy(np.asarray(grid, dtype=np.int64))
            if batch.ndim == 2:
                targets = [dst]
                batch = batch[None]  # (1, h, w)
            else:
                targets = [dst.with_name(f"{dst.stem}_{i:04d}.png") for i in range(batch.shape[0])]
                for t in targets:
                    check_new(t, force)
            for start in range(0, batch.shape[0], 8):
                images = model.decode(batch[start:start + 8])
                for img, target in zip(images, targets[start:start + 8]):
                    written.append(save_png(to_uint8(img), target, force=force))
            if progress is not None:
                progress(1)
    return len(written)
