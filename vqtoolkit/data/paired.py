"""Paired data: an image tree with aligned files of other modalities, in either of two layouts.

- `root/images/` with one sibling folder per modality, named after the condition (`root/depth/`);
- parallel trees, as taming-transformers keeps its data: an image tree (`data.images`, e.g.
  `data/sflckr_images/`) and one tree per condition anywhere (`[data.paired]`, e.g.
  `segmentation = "data/sflckr_segmentations"`), so nothing is copied or linked.

Either way a file pairs with its image by relative path without extension (`a/b.jpg` with
`a/b.png`), and the images can be chosen by a list file (taming's `data/*train.txt`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..images import DEFAULT_MAX_PIXELS, to_tensor
from .folders import IMAGE_EXTENSIONS, _check_scale, _crop_box, _read_list, _scan, crop_like, first_readable

PathLike = str | os.PathLike[str]


class PairedFolder(Dataset):
    """Images of an image tree with aligned files of other modalities from their own trees.

    `root`: a folder holding `images/` and one folder per modality, named after the condition
    (`depth/`, `segmentation/`, `pose/`, `edge/`); or `images`: the image tree itself, with
    `paired` naming each condition's tree (condition name -> folder). `paired` entries also add to
    or replace `root`'s folders. A condition plugin finds its file in `item["paired"][name]`.
    `list_file` picks the images (one path per line, relative to the image tree) instead of every
    image in it. Images are resized (or scaled by `scale`) and cropped as in ImageFolder and
    `item["crop"]` records how, so the plugin can cut its file the same way with `crop_like`.
    Missing paired files are reported, with counts, when the dataset is built.

    Class labels ("label", int64): from `root/labels.csv` (header `name,label`; name = the image's
    path in the image tree without extension) when it exists; otherwise, when every image sits in a
    sub-folder of the image tree, the index of its top-level sub-folder among them, sorted by name
    (ImageNet's layout); otherwise items carry no label.
    """

    def __init__(self, root: PathLike | None, size: int, *, images: PathLike | None = None,
                 paired: dict[str, PathLike] | None = None, list_file: PathLike | None = None,
                 channels: int = 3, train: bool = True, strict: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, scale: float | None = None) -> None:
        if size < 1:
            raise DataError(f"data size must be a positive number of pixels, got {size}")
        _check_scale(scale)
        self.size, self.channels, self.train, self.scale = size, channels, train, scale
        self.strict, self.max_pixels = strict, max_pixels
        self.root = Path(root) if root and not images else None
        self.images = Path(images) if images else self._images_of_root(root)
        if not self.images.is_dir():
            raise DataError(f"image tree {self.images} (data.images) is not a folder")
        if list_file:  # recipes use "" for "not given"
            self.paths, listed = _read_list(Path(list_file), base=self.images)
            self.names = [Path(n).with_suffix("").as_posix() for n in listed]
        else:
            self.paths = _scan(self.images)
            if not self.paths:
                raise DataError(f"{self.images} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
            self.names = [p.relative_to(self.images).with_suffix("").as_posix() for p in self.paths]
        trees = {} if self.root is None else {
            d.name: d for d in sorted(self.root.iterdir())
            if d.is_dir() and d.name != "images" and not d.name.startswith(".")}
        trees.update({name: Path(folder) for name, folder in (paired or {}).items()})
        self.paired = {name: self._match(name, folder) for name, folder in trees.items()}
        self.labels = self._labels()
        self._bad: dict[int, str] = {}

    @staticmethod
    def _images_of_root(root: PathLike | None) -> Path:
        if not root:
            raise DataError("a paired dataset needs data.images (the image tree, with [data.paired] naming each "
                            "condition's tree) or data.root (a folder holding images/ and one folder per modality)")
        images = Path(root) / "images"
        if not images.is_dir():
            raise DataError(f"paired data root {root} has no images/ folder (expected images/ and one folder per "
                            "modality, e.g. depth/; or set data.images and [data.paired] to read parallel trees)")
        return images

    def _match(self, name: str, folder: Path) -> list[str]:
        """The file of `folder` paired with each image, in image order; errors name the gaps."""
        if not folder.is_dir():
            raise DataError(f"data.paired.{name} = {str(folder)!r} is not a folder (expected the tree of "
                            f"'{name}' files, laid out like the image tree {self.images})")
        by_name: dict[str, list[Path]] = {}
        for f in folder.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                by_name.setdefault(f.relative_to(folder).with_suffix("").as_posix(), []).append(f)
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise DataError(f"{folder} lacks the files of {len(missing)} of {len(self.names)} images (first: "
                            f"{', '.join(missing[:3])}); every condition folder must pair with every image by "
                            f"its relative path in {self.images}, any extension")
        twice = [n for n in self.names if len(by_name[n]) > 1]
        if twice:
            raise DataError(f"{folder} holds several files for image {twice[0]!r}: "
                            f"{', '.join(sorted(p.name for p in by_name[twice[0]]))}; keep one")
        return [str(by_name[n][0]) for n in self.names]

    def _labels(self) -> list[int] | None:
        csv_path = self.root / "labels.csv" if self.root is not None else None
        if csv_path is not None and csv_path.is_file():
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
        image, crop = paired_crop(arr, self.size, train=self.train, scale=self.scale, what=str(self.paths[j]))
        item: dict[str, object] = {
            "image": image,
            "name": self.names[j],
            "crop": crop,
            "paired": {name: files[j] for name, files in self.paired.items()},
            "skipped": skipped,
        }
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[j])
        return item


def paired_crop(arr: np.ndarray, size: int, *, train: bool, scale: float | None,
                what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A paired item's image (as `square_crop` cuts it, but with `crop_like`) and its `crop`: (8,) int64
    numbers (see `_crop_box`) with which the item's paired files are cut the same way."""
    crop = _crop_box(arr.shape[0], arr.shape[1], size, train, scale)
    image = crop_like(arr, crop, mode="bicubic", what=what)  # (size, size, C) float
    return to_tensor(np.clip(np.round(image), 0, 255).astype(np.uint8)), crop
