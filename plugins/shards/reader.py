"""WebDataset shards read by index: every sample of every shard addressable by number.

Each shard's tar headers are read once (the member offsets are the index), then an item is a few
positioned reads (`os.pread`, safe in forked DataLoader workers). Being a map-style dataset, it is
ordered by the same resumable sampler as every other source (vqtoolkit/train/order.py): each sample
once per epoch across ranks and workers, a resumed run continues with the very next batch, also on
another number of processes. Remote shards (http(s), pipe:, gs:, ... as `webdataset.gopen` opens
them) are copied once into a cache folder, as WebDataset's own indexed reader (wids) does.

A sample is the members sharing a key (`a/b.png`, `a/b.depth.png`, `a/b.cls`): its image (the one
member whose extension is an image's), its paired files (`<modality>.<ext>`) and its class label
(`cls`, an integer in ASCII). Paired files reach the condition plugins as `NamedBytes`, which every
reader of `vqtoolkit.images` accepts like a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vqtoolkit.data import first_readable, paired_crop, square_crop
from vqtoolkit.errors import DataError, VqtError
from vqtoolkit.fileio import atomic_path
from vqtoolkit.images import DEFAULT_MAX_PIXELS, NamedBytes

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
LABEL_EXT = "cls"
OPEN_SHARDS = 64
INSTALL = "pip install 'vqtoolkit[webdataset]'"


def webdataset_module() -> Any:
    """The `webdataset` package, or an error that says how to install it."""
    try:
        import webdataset
    except ImportError:
        raise VqtError(f"data.source = \"webdataset\" and `vqt shard` need the webdataset package: {INSTALL}") from None
    return webdataset


def expand(urls: str, key: str) -> list[str]:
    """Shard paths or URLs from a pattern: braces (`shard-{000000..000009}.tar`), several joined by `::`."""
    from webdataset.shardlists import expand_urls

    if not urls.strip():
        raise DataError(f"{key} is empty: name the shards, e.g. {key} = \"shards/shard-{{000000..000009}}.tar\" "
                        "(write them with `vqt shard FOLDER -o shards`)")
    try:
        found = [u for u in expand_urls(urls.strip()) if u]
    except Exception as e:  # braceexpand's UnbalancedBracesError and the like
        raise DataError(f"{key} = {urls!r} is not a valid shard pattern: {e}") from None
    if not found:
        raise DataError(f"{key} = {urls!r} names no shards")
    return found


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vqtoolkit" / "shards"


def local_copy(url: str, cache_dir: str) -> Path:
    """The shard as a local file: a path as it is, a remote one copied once into the cache folder."""
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]+):", url)
    if scheme is None or scheme.group(1) == "file":
        return Path(re.sub(r"^file:(//)?", "", url))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-60:]
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    target = (Path(cache_dir) if cache_dir else default_cache()) / f"{digest}-{name}"
    if not target.is_file():
        from webdataset.gopen import gopen

        try:
            with atomic_path(target, force=True) as tmp, gopen(url, "rb") as source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except (OSError, ValueError, VqtError) as e:
            raise DataError(f"cannot fetch shard {url} into {target.parent}: {e}") from None
    return target


@dataclass
class Sample:
    """Where one sample's members sit in its shard: (extension, offset, size) each."""

    shard: int
    key: str
    image: tuple[str, int, int] | None = None
    paired: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    label: tuple[str, int, int] | None = None


def index_shard(path: Path, shard: int) -> list[Sample]:
    """The samples of one shard, in stored order, from its tar headers alone."""
    from webdataset.tariterators import base_plus_ext

    if not path.is_file():
        raise DataError(f"shard {path} does not exist")
    try:
        with tarfile.open(path, "r:") as tar:
            members = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
            end = tar.offset  # where the end-of-archive marker (two zero blocks) starts
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {path} is not a readable tar file ({e}); write it again with `vqt shard`") from None
    length = path.stat().st_size
    if length < end + 2 * tarfile.BLOCKSIZE:
        raise DataError(f"shard {path} is truncated: it stops at byte {length}, before its end-of-archive marker")
    samples: dict[str, Sample] = {}
    for name, offset, size in members:
        if offset + size > length:
            raise DataError(f"shard {path} is truncated: member {name} ends at byte {offset + size} of {length}")
        key, ext = base_plus_ext(name)
        if key is None or Path(name).name.startswith("."):
            continue
        sample = samples.setdefault(key, Sample(shard, key))
        where = (ext, offset, size)
        if ext.lower() in IMAGE_EXTS:
            if sample.image is not None:
                raise DataError(f"shard {path}: sample {key!r} has two images ({sample.image[0]}, {ext})")
            sample.image = where
        elif ext == LABEL_EXT:
            sample.label = where
        elif "." in ext:
            modality = ext.split(".", 1)[0]
            if modality in sample.paired:
                raise DataError(f"shard {path}: sample {key!r} has two {modality} files "
                                f"({sample.paired[modality][0]}, {ext}); keep one")
            sample.paired[modality] = where
    for sample in samples.values():
        if sample.image is None:
            raise DataError(f"shard {path}: sample {sample.key!r} has no image (members named {sample.key}.png, "
                            f".jpg, ... ; paired files as {sample.key}.<condition>.<ext>)")
    return list(samples.values())


class SampleTable(Sequence):
    """Where every sample's members sit, as arrays: about 100 bytes a sample instead of ~600 as Python
    objects, which matters at millions of samples in every rank and forked worker. Items are `Sample`s,
    built when asked."""

    def __init__(self, shards: list[Path], what: str) -> None:
        keys, shard_of, where, exts, names = [], [], [], [], {"": 0}
        first: Sample | None = None
        for i, path in enumerate(shards):
            for sample in index_shard(path, i):
                first = first or sample
                modalities = sorted(first.paired)
                if sorted(sample.paired) != modalities:
                    raise DataError(f"shard {path}: sample {sample.key!r} has paired files "
                                    f"{sorted(sample.paired) or 'none'} but {first.key!r} has {modalities or 'none'}; "
                                    "every sample needs the same ones")
                members = [sample.image, *(sample.paired[m] for m in modalities), sample.label or ("", 0, -1)]
                keys.append(sample.key)
                shard_of.append(i)
                where.append([(offset, size) for _, offset, size in members])
                exts.append([names.setdefault(ext, len(names)) for ext, _, _ in members])
        if first is None:
            raise DataError(f"the shards of {what} hold no samples")
        self.keys, self.modalities = keys, sorted(first.paired)
        self.shard = np.asarray(shard_of, np.int32)
        self.where = np.asarray(where, np.int64)  # (n, 1 + modalities + 1, 2): offset, size (-1: no label)
        self.exts = np.asarray(exts, np.int16)
        self.ext_names = list(names)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> Sample:  # type: ignore[override]
        members = [(self.ext_names[e], int(o), int(n)) for e, (o, n) in zip(self.exts[j], self.where[j])]
        return Sample(int(self.shard[j]), self.keys[j], members[0], dict(zip(self.modalities, members[1:-1])),
                      members[-1] if members[-1][2] >= 0 else None)


class _Images(Sequence):
    """A dataset's images as `first_readable` wants them: item j read from its shard when asked."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, j: int) -> NamedBytes:  # type: ignore[override]
        sample = self.dataset.samples[j]
        return self.dataset.member(sample, sample.image)


class ShardDataset(Dataset):
    """The samples of WebDataset shards, cut as the folder sources cut theirs.

    Samples without paired files are cut as `ImageFolder` cuts an image; samples with them as
    `PairedFolder` does, with `"crop"` and `"paired"` (modality -> NamedBytes) for the condition
    plugins. Unreadable images are skipped and counted as in the folder sources, unless `strict`.
    """

    def __init__(self, urls: str, size: int, *, key: str = "data.urls", cache_dir: str = "", channels: int = 3,
                 train: bool = True, strict: bool = False, scale: float | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        webdataset_module()
        if size < 1:
            raise DataError(f"data size must be a positive number of pixels, got {size}")
        self.size, self.channels, self.train, self.scale = size, channels, train, scale
        self.strict, self.max_pixels = strict, max_pixels
        self.shards = [local_copy(url, cache_dir) for url in expand(urls, key)]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(self.shards)} shards of {key} do not exist (first: "
                            f"{missing[0]})")
        self.samples = SampleTable(self.shards, f"{key} = {urls!r}")
        self.modalities = self.samples.modalities
        self._bad: dict[int, str] = {}
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, the most recently read last

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": OrderedDict()}  # descriptors do not travel to spawned workers

    def _descriptor(self, shard: int) -> int:
        """An open descriptor of the shard; at most OPEN_SHARDS stay open per process (fewer than any
        file limit), the least recently read closed first."""
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        if len(self._files) >= OPEN_SHARDS:
            os.close(self._files.popitem(last=False)[1])
        try:
            self._files[shard] = os.open(self.shards[shard], os.O_RDONLY)
        except OSError as e:
            raise DataError(f"cannot read shard {self.shards[shard]}: {e.strerror or e}") from None
        return self._files[shard]

    def member(self, sample: Sample, where: tuple[str, int, int]) -> NamedBytes:
        """One member's bytes, named `shard.tar/key.ext` in errors. `os.pread` reads at an offset without
        moving a shared file position, so forked workers can share descriptors."""
        ext, offset, size = where
        path = self.shards[sample.shard]
        data = os.pread(self._descriptor(sample.shard), size, offset)
        if len(data) != size:
            raise DataError(f"shard {path} changed since it was indexed: {sample.key}.{ext} is cut short")
        return NamedBytes(f"{path}/{sample.key}.{ext}", data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j, arr, skipped = first_readable(_Images(self), i, self._bad, self.channels, self.max_pixels, self.strict)
        sample = self.samples[j]
        item: dict[str, Any] = {"name": sample.key, "skipped": skipped}
        if self.modalities:
            item["image"], item["crop"] = paired_crop(arr, self.size, train=self.train, scale=self.scale,
                                                      what=f"{self.shards[sample.shard]}/{sample.key}")
            item["paired"] = {name: self.member(sample, where) for name, where in sample.paired.items()}
        else:
            item["image"] = square_crop(arr, self.size, train=self.train, scale=self.scale)
        if sample.label is not None:
            text = self.member(sample, sample.label)
            try:
                item["label"] = torch.tensor(int(text.data.decode().strip()))
            except ValueError:
                raise DataError(f"{text}: the class label {text.data[:20]!r} is not an integer") from None
        return item
