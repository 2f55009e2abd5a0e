"""Token shards: a dataset encoded once by stage 1 (and the condition stage), for stage-2 training.

A shard folder holds `codes_NNNNN.npy` (N, h, w) and, with a condition, `cond_NNNNN.npy`, plus
`manifest.json` naming the models that made them (by a fingerprint of their weights), so stage 2
refuses tokens from another stage 1. Shards are written atomically and the manifest after each one,
so an interrupted `vqt tokenize` resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, VqtError
from ..fileio import atomic_path, atomic_write_text

FORMAT = "vqtoolkit-tokens/1"
MANIFEST = "manifest.json"


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights: the same weights give the same fingerprint."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, force=True) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} holds no token shards ({MANIFEST} missing); make them with 'vqt tokenize'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is damaged: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a vqtoolkit token manifest (format {manifest.get('format')!r})")
    return manifest


def tokenize(dataset: Dataset, out: str | Path, *, encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
             identity: dict[str, Any], batch_size: int = 16, shard_size: int = 1024, num_workers: int = 2,
             progress: Callable[[int], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Encode `dataset` into shards under `out`; resumes a matching, unfinished folder.

    encode(batch) returns {"codes": (B, h, w), "cond": (B, ...)?}; `identity` (model fingerprints,
    condition, data) must equal the existing manifest's to resume.
    """
    out = Path(out)
    path = out / MANIFEST
    manifest = {"format": FORMAT, **identity, "count": 0, "total": len(dataset), "shards": [],
                "complete": False}
    if path.exists():
        try:
            old = read_manifest(out)
        except DataError:
            if not force:
                raise
            old = {}
        same = all(old.get(k) == v for k, v in identity.items()) and old.get("total") == len(dataset)
        if old.get("complete") and not force:
            raise VqtError(f"{out} already holds finished token shards; pass --force to redo them")
        if not same and not force:
            raise VqtError(f"{out} holds token shards from other models or data; pass --force to replace "
                           "them or choose another --out")
        if same and not old.get("complete"):
            manifest = old
    out.mkdir(parents=True, exist_ok=True)
    start = manifest["count"]
    if progress is not None and start:
        progress(start)  # resumed: the bar starts where the last run stopped
    indices = list(range(start, len(dataset)))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False)
    pending: dict[str, list[np.ndarray]] = {}

    def flush() -> None:
        if not pending:
            return
        k = len(manifest["shards"])
        shard = {}
        for key, parts in pending.items():
            name = f"{key}_{k:05d}.npy"
            _save_npy(out / name, np.concatenate(parts))
            shard[key] = name
        shard["count"] = len(np.concatenate(pending["codes"]))
        manifest["shards"].append(shard)
        manifest["count"] += shard["count"]
        atomic_write_text(path, json.dumps(manifest, indent=1), force=True)
        pending.clear()

    for batch in loader:
        encoded = encode(batch)
        for key, value in encoded.items():
            pending.setdefault(key, []).append(value.cpu().numpy().astype(np.int32))
        if progress is not None:
            progress(len(encoded["codes"]))
        if sum(len(p) for p in pending["codes"]) >= shard_size:
            flush()
    flush()
    manifest["complete"] = True
    atomic_write_text(path, json.dumps(manifest, indent=1), force=True)
    return manifest


class TokenShards(Dataset):
    """Items {"codes": (h, w) int64, "cond": (...) int64?} from a finished shard folder;
    `condition=False` reads the codes only (an unconditional model on a conditional task's shards)."""

    def __init__(self, folder: str | Path, condition: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        if not self.manifest.get("complete"):
            raise DataError(f"token shards in {folder} are unfinished ({self.manifest['count']} of "
                            f"{self.manifest['total']}); run 'vqt tokenize' again to finish them")
        self.arrays: dict[str, np.ndarray] = {}
        for key in self.manifest["shards"][0] if self.manifest["shards"] else {}:
            if key == "count" or (key == "cond" and not condition):
                continue
            parts = [self._load(s[key]) for s in self.manifest["shards"]]
            self.arrays[key] = np.concatenate(parts)
        if "codes" not in self.arrays or len(self.arrays["codes"]) == 0:
            raise DataError(f"token shards in {folder} hold no codes")

    def _load(self, name: str) -> np.ndarray:
        path = (self.folder / name).resolve()
        if path.parent != self.folder.resolve():  # a manifest may not point outside its folder
            raise DataError(f"{self.folder / MANIFEST} names {name!r}, outside the shard folder")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"token shard {path} cannot be read: {e}") from None

    def __len__(self) -> int:
        return len(self.arrays["codes"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: torch.from_numpy(a[i].astype(np.int64)) for key, a in self.arrays.items()}
