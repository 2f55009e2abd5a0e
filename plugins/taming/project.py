"""What a taming model's config says, as plain data: the published project.yaml or Lightning's hyper_parameters.

The weights cannot tell the nominal resolution, the attention heads or the settings of a condition stage
without weights; the config can. It is read as data only: YAML through `safe_load`, and pickled OmegaConf
objects through the inert `Placeholder`s of `safe_pickle`, never by importing OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtoolkit.errors import RecipeError

from .safe_pickle import Placeholder


def plain_data(obj: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """Plain dicts/lists/scalars from a loaded config: OmegaConf and other placeholders unwrapped.

    OmegaConf containers pickle their values under `_content`, value nodes under `_val`; other objects
    (argparse.Namespace, Lightning's AttributeDict) contribute their attributes or dict items. Tensors
    and cycles (OmegaConf's `_parent`) give None.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if id(obj) in _seen:
        return None
    seen = _seen | {id(obj)}
    if isinstance(obj, dict):
        return {k: plain_data(v, seen) for k, v in obj.items() if isinstance(k, (str, int))}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v, seen) for v in obj]
    if isinstance(obj, Placeholder):
        if obj.items:
            return plain_data(obj.items, seen)
        state = obj.state
        if isinstance(state, dict):
            for key in ("_content", "_val"):
                if key in state:
                    return plain_data(state[key], seen)
            return plain_data(state, seen)
        if obj.elements:
            return plain_data(obj.elements, seen)
    return None


@dataclass(frozen=True)
class Project:
    """The model section of a taming config: `target` class (None when unknown) and its `params`."""

    target: str | None
    params: dict[str, Any]
    where: str


def section(value: Any) -> tuple[str | None, dict[str, Any]]:
    """(target, params) of a `{target, params}` sub-config; a bare string such as "__is_unconditional__"."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        target = value.get("target")
        params = value.get("params")
        return (target if isinstance(target, str) else None), (params if isinstance(params, dict) else {})
    return None, {}


def project_from(data: Any, where: str) -> Project | None:
    if not isinstance(data, dict) or not data:
        return None
    if isinstance(data.get("model"), dict):  # a whole project.yaml
        target, params = section(data["model"])
        return Project(target, params, where)
    if "target" in data:
        target, params = section(data)
        return Project(target, params, where)
    return Project(None, data, where)  # Lightning hyper_parameters: the model's own arguments


def read_yaml(path: Path) -> Project:
    try:
        import yaml
    except ImportError:
        raise RecipeError(f"reading {path} needs PyYAML: pip install pyyaml") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RecipeError(f"config {path} is not readable YAML: {e}") from None
    project = project_from(data, str(path))
    if project is None or project.target is None:
        raise RecipeError(f"config {path} has no 'model: {{target: ..., params: ...}}' section; expected the "
                          "project.yaml published with the checkpoint (e.g. configs/*-project.yaml)")
    return project


def option(params: dict[str, Any], key: str, where: str, kind: type, default: Any = None) -> Any:
    """`params[key]` checked to be an int (kind=int) or a number (kind=float); None when absent."""
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise RecipeError(f"{where}: {key} = {value!r} is invalid: expected {kind.__name__}")
    return kind(value)
