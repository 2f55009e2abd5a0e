"""Datasets for training and evaluation: image folders and the built-in synthetic scenes.

Both return the same item shape, `{"image": (C, size, size) float in [-1, 1], "name": str}`, so
the training loop does not care where images come from; the synthetic scenes add their paired
modalities (depth, segmentation, pose, label) for conditioning plugins.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqtoolkit.errors import DataError, ImageError
from vqtoolkit.images import DEFAULT_MAX_PIXELS, convert_channels, load_image, to_tensor
from vqtoolkit.synthetic import flip_pose, render_scene

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SOURCES = ("folder", "synthetic", "paired")


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


def _read_list(list_file: Path) -> tuple[list[Path], list[str]]:
    """Paths from a list file, one per line, relative to the list file's folder (or absolute).

    Upstream taming-transformers opens list entries relative to the working directory; resolving
    against the list file instead makes a dataset folder relocatable. Blank lines are skipped.
    """
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"list file {list_file} names no images")
    paths = [list_file.parent / n for n in names]
    missing = [n for n, p in zip(names, paths) if not p.is_file()]
    if missing:
        from_cwd = sum(Path(n).is_file() for n in missing)
        hint = (
            f"; {from_cwd} of them exist relative to the current directory (the upstream convention), "
            "but entries are read relative to the list file's folder"
            if from_cwd
            else ""
        )
        raise DataError(
            f"list file {list_file}: {len(missing)} of {len(names)} listed images do not exist "
            f"(first: {', '.join(missing[:3])}){hint}"
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
    otherwise.

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
    ) -> None:
        if size < 1:
            raise DataError(f"data size must be a positive number of pixels, got {size}")
        self.size, self.channels, self.train = size, channels, train
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

    def _crop(self, arr: np.ndarray) -> np.ndarray:
        """Resize the smallest side to `size` (bicubic), then crop (and flip) to size x size."""
        h, w, nh, nw, top, left, flip = (int(v) for v in _crop_box(*arr.shape[:2], self.size, self.train))
        if (nh, nw) != (h, w):
            img = Image.fromarray(arr[:, :, 0] if self.channels == 1 else arr)
            arr = convert_channels(np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC)), self.channels)
        arr = arr[top : top + self.size, left : left + self.size]
        return arr[:, ::-1] if flip else arr  # (size, size, C)

    def __getitem__(self, i: int) -> dict[str, object]:
        j, arr, skipped = first_readable(self.paths, i, self._bad, self.channels, self.max_pixels, self.strict)
        return {"image": to_tensor(self._crop(arr)), "name": self.names[j], "skipped": skipped}


class SyntheticScenes(Dataset):
    """`n` procedural scenes with paired depth, segmentation, pose and class label.

    Item k is scene `seed * 1_000_003 + k`. When `train`, it is flipped horizontally with
    probability 1/2, decided by a generator seeded from (seed, k, epoch), so the flip is the same
    in every worker and changes with `set_epoch`. All modalities flip together (pose x mirrored,
    left/right keypoints swapped).
    """

    def __init__(self, n: int, size: int, *, seed: int = 0, train: bool = True, channels: int = 3) -> None:
        if n < 1:
            raise DataError(f"synthetic dataset size n must be at least 1, got {n}")
        if seed < 0:
            raise DataError(f"synthetic dataset seed must be >= 0, got {seed}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.n, self.size, self.seed, self.train, self.channels = n, size, seed, train, channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's flips (call before each epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict[str, object]:
        if not 0 <= k < self.n:
            raise IndexError(f"scene index {k} out of range for {self.n} scenes")
        scene = render_scene(self.seed * 1_000_003 + k, self.size)
        image, depth, seg, pose = scene.image, scene.depth, scene.segmentation, scene.pose
        if self.train and np.random.default_rng([self.seed, k, self.epoch]).random() < 0.5:
            image, depth, seg = image[:, ::-1], depth[:, ::-1], seg[:, ::-1]
            pose = flip_pose(pose, image.shape[1])
        return {
            "image": to_tensor(convert_channels(image, self.channels)),  # (C, H, W)
            "name": f"synthetic/{k:06d}",
            "depth": torch.from_numpy(depth.copy()),  # (H, W) float32
            "segmentation": torch.from_numpy(seg.copy()),  # (H, W) int64
            "pose": torch.from_numpy(pose.copy()),  # (17, 3) float32
            "label": torch.tensor(scene.label),  # () int64
        }


class WithCondition(Dataset):
    """Adds each item's raw condition ("cond_raw"), read from its paired data or derived from its image.

    With `as_image`, the raw condition replaces the image: that is what a condition's own VQGAN
    (e.g. the depth VQGAN) trains on.
    """

    def __init__(self, dataset: Dataset, condition: Any, options: Any, as_image: bool = False) -> None:
        self.dataset, self.condition, self.options, self.as_image = dataset, condition, options, as_image

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        raw = self.condition.from_item(item, self.options)
        out = {"image": raw} if self.as_image else {"image": item["image"], "cond_raw": raw}
        out.update({k: item[k] for k in ("name", "skipped") if k in item})
        return out


def _crop_box(h: int, w: int, size: int, train: bool) -> torch.Tensor:
    """The resize-then-crop an ImageFolder applies, as numbers: (h, w, nh, nw, top, left, flip)."""
    nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    if train:
        top, left = int(torch.randint(0, nh - size + 1, ())), int(torch.randint(0, nw - size + 1, ()))
        flip = int(torch.rand(()) < 0.5)
    else:
        top, left, flip = (nh - size) // 2, (nw - size) // 2, 0
    return torch.tensor([h, w, nh, nw, top, left, flip])


def crop_like(arr: np.ndarray, crop: torch.Tensor, *, mode: str = "bilinear", what: str = "array") -> np.ndarray:
    """Apply an item's `crop` (from PairedFolder) to a paired array (H, W) or (H, W, C) of its image.

    `mode` is "nearest" for label maps (interpolated labels are other labels; the dtype is kept),
    "bilinear" for continuous data (depth, rendered maps) or "bicubic" (images); both antialiased.
    The array must be as large as the image file it pairs with; `what` names it in the error.
    """
    h, w, nh, nw, top, left, flip = (int(v) for v in crop)
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
    size = min(nh, nw)
    t = t[0, :, top:top + size, left:left + size]  # (C, size, size)
    if flip:
        t = t.flip(-1)
    out = t[0] if arr.ndim == 2 else t.permute(1, 2, 0)
    return out.numpy().astype(arr.dtype) if mode == "nearest" else out.numpy()


class PairedFolder(Dataset):
    """Images in `root/images/` with aligned files of other modalities in sibling folders.

    `root/images/a/b.jpg` pairs with `root/<modality>/a/b.<any extension>` in every other visible
    sub-folder of `root`; the folder name is the condition name (`depth/`, `segmentation/`,
    `pose/`, `edge/`), so a condition plugin finds its file in `item["paired"][name]`. Images are
    resized and cropped as in ImageFolder and `item["crop"]` records how, so the plugin can cut its
    file the same way with `crop_like`. A missing paired file is reported when the dataset is built.

    Class labels ("label", int64): from `root/labels.csv` (header `name,label`; name = the image's
    path under `images/` without extension) when it exists; otherwise, when every image sits in a
    sub-folder of `images/`, the index of its top-level sub-folder among them, sorted by name
    (ImageNet's layout); otherwise items carry no label.
    """

    def __init__(self, root: str | os.PathLike[str] | None, size: int, *, channels: int = 3,
                 train: bool = True, strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if size < 1:
            raise DataError(f"data size must be a positive number of pixels, got {size}")
        if not root:
            raise DataError("a paired dataset needs data.root: a folder holding images/ and one folder "
                            "per modality")
        self.root, self.size, self.channels, self.train = Path(root), size, channels, train
        self.strict, self.max_pixels = strict, max_pixels
        images = self.root / "images"
        if not images.is_dir():
            raise DataError(f"paired data root {self.root} has no images/ folder (expected images/ and one "
                            "folder per modality, e.g. depth/)")
        self.paths = _scan(images)
        if not self.paths:
            raise DataError(f"{images} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.names = [p.relative_to(images).with_suffix("").as_posix() for p in self.paths]
        self.paired = {d.name: self._match(d) for d in sorted(self.root.iterdir())
                       if d.is_dir() and d.name != "images" and not d.name.startswith(".")}
        self.labels = self._labels()
        self._bad: dict[int, str] = {}

    def _match(self, folder: Path) -> list[str]:
        """The file of `folder` paired with each image, in image order; errors name the gaps."""
        by_name: dict[str, list[Path]] = {}
        for f in folder.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                by_name.setdefault(f.relative_to(folder).with_suffix("").as_posix(), []).append(f)
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise DataError(f"{folder} lacks the files of {len(missing)} of {len(self.names)} images (first: "
                            f"{', '.join(missing[:3])}); every folder beside images/ must pair with every image")
        twice = [n for n in self.names if len(by_name[n]) > 1]
        if twice:
            raise DataError(f"{folder} holds several files for image {twice[0]!r}: "
                            f"{', '.join(sorted(p.name for p in by_name[twice[0]]))}; keep one")
        return [str(by_name[n][0]) for n in self.names]

    def _labels(self) -> list[int] | None:
        csv_path = self.root / "labels.csv"
        if csv_path.is_file():
            import csv

            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or not {"name", "label"} <= set(rows[0]):
                raise DataError(f"{csv_path} needs a header 'name,label' and one row per image")
            table: dict[str, int] = {}
            for i, row in enumerate(rows, start=2):
                try:
                    table[row["name"].strip()] = int(row["label"])
                except (TypeError, ValueError):
                    raise DataError(f"{csv_path} line {i}: label {row['label']!r} is not an integer") from None
            missing = [n for n in self.names if n not in table]
            if missing:
                raise DataError(f"{csv_path} has no label for {len(missing)} images (first: "
                                f"{', '.join(missing[:3])}); names are paths under images/ without extension")
            return [table[n] for n in self.names]
        if all("/" in n for n in self.names):
            classes = sorted({n.split("/", 1)[0] for n in self.names})
            return [classes.index(n.split("/", 1)[0]) for n in self.names]
        return None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, object]:
        j, arr, skipped = first_readable(self.paths, i, self._bad, self.channels, self.max_pixels, self.strict)
        crop = _crop_box(arr.shape[0], arr.shape[1], self.size, self.train)
        image = crop_like(arr, crop, mode="bicubic", what=str(self.paths[j]))  # (size, size, C) float
        item: dict[str, object] = {
            "image": to_tensor(np.clip(np.round(image), 0, 255).astype(np.uint8)),
            "name": self.names[j],
            "crop": crop,  # (7,) int64
            "paired": {name: files[j] for name, files in self.paired.items()},
            "skipped": skipped,
        }
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[j])
        return item


def build_dataset(
    source: str,
    root: str | os.PathLike[str] | None,
    size: int,
    *,
    channels: int = 3,
    train: bool = True,
    n: int = 1000,
    seed: int = 0,
    list_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> Dataset:
    """The dataset a recipe's `[data]` section names: `source` is "folder", "synthetic" or "paired"."""
    if source == "folder":
        return ImageFolder(root, size, channels=channels, train=train, list_file=list_file, strict=strict)
    if source == "synthetic":
        return SyntheticScenes(n, size, seed=seed, train=train, channels=channels)
    if source == "paired":
        return PairedFolder(root, size, channels=channels, train=train, strict=strict)
    close = difflib.get_close_matches(source, SOURCES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(f"unknown data source {source!r}; {hint}(choose from {', '.join(SOURCES)})")
