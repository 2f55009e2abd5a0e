"""`vqt shard`: an image folder or a paired tree written as WebDataset shards, files as they are.

A sample's members are its files' original bytes: `key.png`, `key.depth.png`, `key.cls` (the paired
tree's class label), where the key is the image's path in its tree without extension (dots in the
file name become `_`, since WebDataset splits a member's name at the first dot of its base name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vqtoolkit.data import ImageFolder, PairedFolder
from vqtoolkit.errors import DataError, VqtError
from vqtoolkit.fileio import all_or_nothing, atomic_path

from .reader import IMAGE_EXTS, LABEL_EXT, webdataset_module

SHARD_NAME = "shard-{:06d}.tar"


@dataclass
class Entry:
    """One sample to write: its key, its files (extension in the shard -> path) and its class label."""

    key: str
    files: dict[str, Path] = field(default_factory=dict)
    label: int | None = None


def _key(name: str) -> str:
    folder, _, base = name.rpartition("/")
    return (folder + "/" if folder else "") + base.replace(".", "_")


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def folder_entries(folder: str | Path, paired: dict[str, str]) -> list[Entry]:
    """The samples of a plain image folder, of a paired tree (FOLDER/images/ + one folder per
    modality), or of an image tree with `paired` naming each modality's parallel tree."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected an image folder or a paired tree with images/)")
    if paired or (folder / "images").is_dir():
        tree = PairedFolder(None if paired else folder, 8, images=folder if paired else None, paired=paired)
        entries = [Entry(_key(name), {_ext(path): path}, None if tree.labels is None else tree.labels[i])
                   for i, (name, path) in enumerate(zip(tree.names, tree.paths))]
        for modality, files in tree.paired.items():
            if "." in modality or modality in IMAGE_EXTS or modality == LABEL_EXT:
                raise DataError(f"paired folder name {modality!r} cannot name a modality in a shard (no dots; not "
                                f"an image extension or '{LABEL_EXT}')")
            for entry, file in zip(entries, files):
                entry.files[f"{modality}.{_ext(Path(file))}"] = Path(file)
    else:
        images = ImageFolder(folder, 8)
        entries = [Entry(_key(Path(name).with_suffix("").as_posix()), {_ext(path): path})
                   for name, path in zip(images.names, images.paths)]
    seen: dict[str, Entry] = {}
    for entry in entries:
        if entry.key in seen:
            raise DataError(f"{folder}: two images become sample {entry.key!r} "
                            f"({', '.join(str(p) for p in (*seen[entry.key].files.values(), *entry.files.values()))});"
                            " rename one")
        seen[entry.key] = entry
    return entries


def _chunks(entries: list[Entry], per_shard: int) -> Iterator[list[Entry]]:
    for start in range(0, len(entries), per_shard):
        yield entries[start:start + per_shard]


def check_out(out: Path, force: bool) -> list[Path]:
    """The shards already in `out` (to be replaced with `force`); without it, an error if there are any."""
    old = sorted(p for p in out.glob("shard-*.tar") if re.fullmatch(r"shard-\d{6}\.tar", p.name))
    if out.exists() and not out.is_dir():
        raise VqtError(f"{out} is a file; -o names the folder the shards go to")
    if old and not force:
        raise VqtError(f"{out} already holds shards ({old[0].name}, ...); pass --force to replace them")
    return old


def write_shards(entries: list[Entry], out: str | Path, *, per_shard: int, force: bool = False,
                 progress: Callable[[int], object] | None = None) -> list[Path]:
    """Write `entries` as `out/shard-000000.tar ...`, `per_shard` samples each; every shard appears
    whole (atomic) and none is overwritten without `force`, which also removes stale higher-numbered
    shards of an earlier run. Returns the shard paths."""
    wds = webdataset_module()
    out = Path(out)
    old = check_out(out, force)
    written: list[Path] = []
    with all_or_nothing() as made:
        for number, chunk in enumerate(_chunks(entries, per_shard)):
            path = out / SHARD_NAME.format(number)
            with atomic_path(path, force=True) as tmp, open(tmp, "wb") as stream:
                with wds.TarWriter(stream, encoder=False, mtime=0) as tar:
                    for entry in chunk:
                        sample: dict[str, object] = {"__key__": entry.key}
                        for ext, file in entry.files.items():
                            try:
                                sample[ext] = file.read_bytes()
                            except OSError as e:
                                raise DataError(f"cannot read {file}: {e.strerror or e}") from None
                        if entry.label is not None:
                            sample[LABEL_EXT] = str(entry.label).encode()
                        tar.write(sample)
                        if progress is not None:
                            progress(1)
            made.append(path)
            written.append(path)
    for stale in old:
        if stale not in written:
            stale.unlink()
    return written


def pattern(shards: list[Path]) -> str:
    """The brace pattern naming these shards, for a recipe's data.urls."""
    last = len(shards) - 1
    return str(shards[0].parent / f"shard-{{000000..{last:06d}}}.tar")
