"""Image folders on disk: a plain folder tree (or list file), and how paired files are cut like their image.

Items are `{"image": (C, size, size) float in [-1, 1], "name": str, ...}`, the shape every data source
gives, so the training loop does not care where images come from. Paired items (`paired.PairedFolder`)
add `"paired"` (modality name -> its file) and `"crop"` (how the image was cut), which `paired_array`
applies to the modality's file; a condition plugin reads its data with that, whatever the source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError, ImageError
from ..images import DEFAULT_MAX_PIXELS, convert_channels, load_image, to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _scan(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path for determinism.

    Hidden files and folders (".git", macOS "._x.png" resource forks) are ignored. Symlinked
    folders are followed, each real folder once, so a folder of links to datasets works and a
    link cycle cannot loop.
    """
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_list(list_file: Path, base: Path | None = None) -> tuple[list[Path], list[str]]:
    """Paths from a list file, one per line, relative to `base` (default: the list file's folder)
    or absolute.

    Upstream taming-transformers opens image-only list entries relative to the working directory;
    resolving against the list file instead makes a dataset folder relocatable. Paired data passes
    its image tree as `base`, as taming joins its list entries to the image root. Blank lines are
    skipped.
    """
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"list file {list_file} names no images")
    folder = list_file.parent if base is None else base
    paths = [folder / n for n in names]
    missing = [n for n, p in zip(names, paths) if not p.is_file()]
    if missing:
        from_cwd = sum(Path(n).is_file() for n in missing)
        hint = (
            f"; {from_cwd} of them exist relative to the current directory (the upstream convention), "
            f"but entries are read relative to {folder}"
            if from_cwd
            else ""
        )
        raise DataError(
            f"list file {list_file}: {len(missing)} of {len(names)} listed images do not exist under "
            f"{folder} (first: {', '.join(missing[:3])}){hint}"
        )
    return paths, names


def first_readable(paths: list[Path], i: int, bad: dict[int, str], channels: int, max_pixels: int,
                   strict: bool) -> tuple[int, np.ndarray, str]:
    """Image i, or the next readable one after it (wrapping): unreadable files are skipped, remembered
    in `bad` and logged, unless `strict`, where the first one raises. Also returns the files newly
    found unreadable, one per line, which items carry as "skipped" so the training loop can count
    them across worker processes."""
    n = len(paths)
    found = []
    for j in (k % n for k in range(i, i + n)):
        if j in bad:
            continue
        try:
            return j, load_image(paths[j], channels, max_pixels), "\n".join(found)
        except ImageError as e:
            if strict:
                raise
            bad[j] = str(e)
            found.append(str(paths[j]))
            log.warning("skipping unreadable image: %s", e)
    raise DataError(f"none of the {n} images could be read (first: {paths[0]}; pass data.strict = true "
                    "to stop at the first one with its reason)")


class ImageFolder(Dataset):
    """Images from a folder tree (`root`) or a list file (then `root` is unused), cropped square.

    The smallest side is resized to `size` (bicubic), then a random crop and horizontal flip are
    taken when `train` (drawn from torch's RNG, which DataLoader seeds per worker), a centre crop
    otherwise. With `scale` (a number > 0) the image is instead scaled by that factor, 1 = native
    resolution, and `size` crops are cut from it: the model sees the scale it will sample at
    (an image smaller than `size` after scaling is scaled up to fit).

    Unreadable files: with `strict`, the first one raises an ImageError naming it. Otherwise item
    i falls back to files i+1, i+2, ... (deterministic per item, whatever the worker) and the bad
    file is recorded in `skipped`. Each DataLoader worker holds its own copy of the dataset, so
    `skipped` and `summary()` are best-effort: they count what this process has seen.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        size: int,
        *,
        channels: int = 3,
        train: bool = True,
        list_file: str | os.PathLike[str] | None = None,
        strict: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        scale: float | None = None,
    ) -> None:
        if size < 1:
            raise DataError(f"data size must be a positive number of pixels, got {size}")
        _check_scale(scale)
        self.size, self.channels, self.train, self.scale = size, channels, train, scale
        self.strict, self.max_pixels = strict, max_pixels
        if list_file:  # recipes use "" for "not given"
            self.origin = Path(list_file)
            self.paths, self.names = _read_list(self.origin)
        else:
            if not root:
                raise DataError("an image folder dataset needs a root folder (data.root) or a list file "
                                "(data.list_file)")
            self.origin = Path(root)
            looked_for = f"looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively"
            if not self.origin.is_dir():
                raise DataError(f"data root {self.origin} is not a folder ({looked_for})")
            self.paths = _scan(self.origin)
            if not self.paths:
                raise DataError(f"data root {self.origin} holds no images ({looked_for})")
            self.names = [p.relative_to(self.origin).as_posix() for p in self.paths]
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) for every unreadable file this process has met, in index order."""
        return [(str(self.paths[i]), self._bad[i]) for i in sorted(self._bad)]

    def summary(self) -> str:
        """One line for logs: how many images, how many skipped and the first few reasons."""
        line = f"{len(self)} images from {self.origin}; {len(self._bad)} skipped as unreadable"
        return line + "".join(f"\n  {p}: {r}" for p, r in self.skipped[:5])

    def __getitem__(self, i: int) -> dict[str, object]:
        j, arr, skipped = first_readable(self.paths, i, self._bad, self.channels, self.max_pixels, self.strict)
        return {"image": square_crop(arr, self.size, train=self.train, scale=self.scale), "name": self.names[j],
                "skipped": skipped}


def square_crop(arr: np.ndarray, size: int, *, train: bool, scale: float | None) -> torch.Tensor:
    """An image folder's item image: uint8 (H, W, C) resized (the smallest side to `size`, or by
    `scale`), then cut to size x size (a random crop and flip when `train`, else the centre), in [-1, 1]."""
    box = _crop_box(*arr.shape[:2], size, train, scale)
    h, w, nh, nw, top, left, flip, _ = (int(v) for v in box)
    if (nh, nw) != (h, w):
        channels = arr.shape[2]
        img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
        arr = convert_channels(np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC)), channels)
    arr = arr[top : top + size, left : left + size]
    return to_tensor(arr[:, ::-1] if flip else arr)  # (C, size, size)


def _check_scale(scale: float | None) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
        raise DataError(f"data scale must be a positive number (1 = native resolution), got {scale!r}")


def _crop_box(h: int, w: int, size: int, train: bool, scale: float | None = None) -> torch.Tensor:
    """The resize-then-crop an ImageFolder applies, as numbers: (h, w, nh, nw, top, left, flip, size).

    The image (h, w) is resized to (nh, nw): the smallest side to `size`, or, with `scale`, both
    sides by that factor (at least enough for `size`); then the size x size crop at (top, left)
    is cut, and flipped when `flip`.
    """
    if scale is None:
        nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    else:
        factor = max(scale, size / min(h, w))
        nh, nw = max(size, round(h * factor)), max(size, round(w * factor))
    if train:
        top, left = int(torch.randint(0, nh - size + 1, ())), int(torch.randint(0, nw - size + 1, ()))
        flip = int(torch.rand(()) < 0.5)
    else:
        top, left, flip = (nh - size) // 2, (nw - size) // 2, 0
    return torch.tensor([h, w, nh, nw, top, left, flip, size])


def crop_like(arr: np.ndarray, crop: torch.Tensor, *, mode: str = "bilinear", what: str = "array") -> np.ndarray:
    """Apply an item's `crop` (from PairedFolder) to a paired array (H, W) or (H, W, C) of its image.

    `mode` is "nearest" for label maps (interpolated labels are other labels; the dtype is kept),
    "bilinear" for continuous data (depth, rendered maps) or "bicubic" (images); both antialiased.
    The array must be as large as the image file it pairs with; `what` names it in the error.
    """
    h, w, nh, nw, top, left, flip, size = (int(v) for v in crop)
    if arr.shape[:2] != (h, w):
        raise DataError(f"{what} is {arr.shape[1]}x{arr.shape[0]} but its image is {w}x{h}; paired files "
                        "must have the size of their image")
    t = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))  # a copy: read-only arrays are fine
    t = t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None]  # (1, C, H, W)
    if (nh, nw) != (h, w):
        if mode == "nearest":
            t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="nearest-exact")
        else:
            t = torch.nn.functional.interpolate(t, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
    t = t[0, :, top:top + size, left:left + size]  # (C, size, size)
    if flip:
        t = t.flip(-1)
    out = t[0] if arr.ndim == 2 else t.permute(1, 2, 0)
    return out.numpy().astype(arr.dtype) if mode == "nearest" else out.numpy()


def paired_array(item: dict[str, Any], name: str, load: Callable[[str], np.ndarray], *,
                 mode: str) -> np.ndarray | None:
    """The `name` modality of a dataset item, aligned with its image; None when the item has none.

    A source that keeps its modalities in memory (the synthetic scenes) puts arrays in
    `item["paired"]`, already cut like the image. A paired folder puts file paths there, which are
    loaded with `load` and cut with the item's `crop` (`mode` as in `crop_like`).
    """
    value = item.get("paired", {}).get(name)
    if value is None or isinstance(value, np.ndarray):
        return value
    return crop_like(load(value), item["crop"], mode=mode, what=f"{name} file {value}")
