"""Model bundles and training state, as safetensors files with JSON metadata.

Nothing here unpickles: a bundle is tensors under namespaces (`vqgan.*`, `cond.*`, `transformer.*`)
plus metadata that says what the tensors are (`format`, `kind`, `config`, `condition`, `version`).
Training state (optimizers, RNG, step) is flattened into tensors plus a JSON skeleton, so resuming
is as safe as loading weights. Every write is atomic: a temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .version import __version__
from .errors import CheckpointError
from .fileio import atomic_path

FORMAT = "vqtoolkit/1"
FORMAT_VERSION = 1
KINDS = ("stage1", "stage2", "train-state")


@dataclass(frozen=True)
class Bundle:
    """A loaded model bundle: tensors by full name, plus its metadata."""

    path: Path
    kind: str
    config: dict[str, Any]
    condition: dict[str, Any]
    version: str
    tensors: dict[str, torch.Tensor]

    def namespace(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix.` with the prefix stripped (e.g. 'vqgan')."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone() makes every tensor own its memory.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_bundle(path: str | Path, tensors: dict[str, torch.Tensor], *, kind: str,
                config: dict[str, Any], condition: dict[str, Any] | None = None,
                force: bool = False) -> None:
    """Write a model bundle atomically; refuses to overwrite unless `force`."""
    if kind not in KINDS:
        raise ValueError(f"bundle kind must be one of {KINDS}, got {kind!r}")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "condition": json.dumps(condition or {}, sort_keys=True),
        "version": __version__,
    }
    with atomic_path(path, force=force) as tmp:
        save_file(_cpu_contiguous(tensors), str(tmp), metadata=metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def bundle_kind(path: str | Path) -> str:
    """A bundle's kind ("stage1", "stage2") from its metadata alone, without reading tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model bundle {path} does not exist")
    return _read_metadata(path).get("kind", "")


def load_bundle(path: str | Path, expect_kind: str | None = None) -> Bundle:
    """Read a bundle (never unpickles), checking format, version and, if given, its kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model bundle {path} does not exist")
    meta = _read_metadata(path)
    if meta.get("format", "").split("/")[0] != "vqtoolkit":
        raise CheckpointError(f"{path} is not a vqtoolkit bundle (no 'format' metadata); "
                              "original taming-transformers checkpoints need 'vqt convert' first")
    try:
        version = int(meta.get("format_version", "0") or 0)
    except ValueError:
        raise CheckpointError(f"{path} has a damaged format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses bundle format version {version}, newer than this "
                              f"vqtoolkit {__version__} reads ({FORMAT_VERSION}); upgrade vqtoolkit")
    kind = meta.get("kind", "")
    if expect_kind and kind != expect_kind:
        hint = {"stage1": "a stage-1 (VQGAN) bundle, e.g. runs/quickstart/last.safetensors",
                "stage2": "a stage-2 (transformer) bundle from 'vqt train-stage2'"}.get(expect_kind, expect_kind)
        raise CheckpointError(f"{path} is a {kind or 'unknown'} bundle; this command needs {hint}")
    try:
        config = json.loads(meta.get("config", "{}"))
        condition = json.loads(meta.get("condition", "{}"))
        tensors = load_file(str(path))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged: {e}") from None
    return Bundle(path, kind, config, condition, meta.get("version", ""), tensors)


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load tensors into `module`, naming missing, unexpected and mis-shaped tensors on failure."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:8]) + (f", … ({len(names)} in all)" if len(names) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{what} does not match the model it describes; " + "; ".join(problems))
    module.load_state_dict(tensors, strict=True)


# ---- training state: nested Python data with tensors, stored without pickle ----------------------

def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace every tensor in nested dicts/lists by {"__tensor__": key}; return the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"state keys must be str or int at {prefix}")
        # JSON keys are strings: remember which ones were ints (optimizer state is keyed by int).
        return {"__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in training state at {prefix}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write the resume state (always overwrites: it belongs to the run)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": "train-state",
                "state": json.dumps(skeleton), "version": __version__}
    with atomic_path(path, force=True) as tmp:
        save_file(_cpu_contiguous(tensors), str(tmp), metadata=metadata)


def load_train_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta = _read_metadata(path)
    if meta.get("kind") != "train-state":
        raise CheckpointError(f"{path} is not a vqtoolkit training state")
    try:
        return unflatten_state(json.loads(meta["state"]), load_file(str(path)))
    except (KeyError, json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"training state {path} is damaged: {e}") from None


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict under `prefix.`, for save_bundle."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
