"""data.source = "csv": the images a CSV file lists, as a vqtoolkit data source.

    [data]
    source = "csv"
    csv = "data/photos.csv"      # paths in it are relative to the CSV's folder
    column = "file"              # the column with the image paths (default "path")
    split_column = "split"       # rows saying "train" train, rows saying "val" are held out

The source's own keys are its `Options` dataclass: vqtoolkit reads them from [data], checks their
types, and stores them in the run folder and bundles; shared keys (size, num_workers, ...) arrive in
`data`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqtoolkit.data import DataSource
from vqtoolkit.errors import DataError
from vqtoolkit.images import convert_channels, load_image, to_tensor


@dataclass(frozen=True)
class CsvOptions:
    csv: str = ""  # the CSV file listing the images (required; checked when the data is built)
    column: str = "path"  # the column holding each image's path, relative to the CSV's folder
    split_column: str = ""  # a column of "train" / "val" per row; empty: every row trains, none is held out


def read_rows(options: CsvOptions, split: str) -> list[str]:
    """The image paths listed in the rows of `split`: "train" (every row without a split column) or "val"."""
    if split == "val" and not options.split_column:
        return []
    path = Path(options.csv)
    if not path.is_file():
        raise DataError(f"data.csv = {options.csv!r}: expected the path of a CSV file listing the images")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for key in (options.column, options.split_column):
            if key and key not in (reader.fieldnames or []):
                raise DataError(f"{path} has no column {key!r} (its columns: {', '.join(reader.fieldnames or [])})")
        return [row[options.column] for row in reader if not options.split_column or row[options.split_column] == split]


class CsvImages(Dataset):
    """The listed images (paths relative to `folder`), resized so the smallest side is `size`, then
    cropped square: a random crop and flip when `augment` (torch's RNG, which the loader seeds), the
    centre otherwise."""

    def __init__(self, folder: Path, listed: list[str], size: int, channels: int, augment: bool) -> None:
        self.folder, self.listed = folder, listed
        self.size, self.channels, self.augment = size, channels, augment

    def __len__(self) -> int:
        return len(self.listed)

    def __getitem__(self, i: int) -> dict:
        image = Image.fromarray(load_image(self.folder / self.listed[i], channels=3))
        scale = self.size / min(image.size)
        w, h = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
        if self.augment:
            top, left = (int(torch.randint(0, n - self.size + 1, ())) for n in (h, w))
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.augment and torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = convert_channels(np.asarray(image), self.channels)  # (size, size, channels) uint8
        return {"image": to_tensor(array), "name": self.listed[i]}


class CsvSource(DataSource):
    name = "csv"
    description = "Images listed in a CSV file (data.csv, data.column); data.split_column holds some out."
    Options = CsvOptions

    def dataset(self, data, options: CsvOptions, *, channels: int, augment: bool, seed: int) -> Dataset:
        listed = read_rows(options, "train")
        if not listed:
            why = f" (no row has {options.split_column} = train)" if options.split_column else ""
            raise DataError(f"{options.csv} lists no training images{why}")
        return CsvImages(Path(options.csv).parent, listed, data.size, channels, augment)

    def held_out(self, data, options: CsvOptions, *, channels: int, seed: int) -> Dataset | None:
        listed = read_rows(options, "val")
        return CsvImages(Path(options.csv).parent, listed, data.size, channels, augment=False) if listed else None
