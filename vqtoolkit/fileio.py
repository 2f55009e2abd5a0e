"""Atomic file writes: outputs appear whole or not at all, and are never overwritten silently.

A write goes to a temp file in the destination's folder, is fsynced, then renamed over the target, so
an interrupted run or a full disk leaves any previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import VqtError


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder; on success fsync it and rename it over `path`.

    An interrupted or failed write leaves any previous file at `path` untouched.
    """
    path = Path(path)
    check_new(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise VqtError(f"cannot write {path}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600 files; outputs get the usual umask
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VqtError(f"cannot write {path}: {e.strerror or e}; any previous file there "
                              "is unchanged") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str, force: bool = False) -> None:
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_new(path: str | Path, force: bool) -> None:
    """Refuse early (before any work) to overwrite an existing output without --force."""
    if Path(path).exists() and not force:
        raise VqtError(f"{path} already exists; pass --force to overwrite it")


@contextlib.contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
    """Collect the outputs one command writes; if it fails part-way, remove them (no partial output)."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
