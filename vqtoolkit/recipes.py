"""Recipes: TOML files parsed into the frozen, typed dataclasses of `config.py`.

Every key is type-checked, unknown keys get a "did you mean", `--set section.key=value` overrides any
value, and the resolved recipe is written into the run directory so a run can always be reproduced.
The section dataclasses are importable from here too (`from vqtoolkit.recipes import Recipe`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from .config import (ConditionConfig, DataConfig, LossConfig, ModelConfig, QuantizerConfig, Recipe, SampleConfig,
                     TrainConfig, TransformerConfig)
from .errors import RecipeError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ConditionConfig", "DataConfig", "LossConfig", "ModelConfig", "QuantizerConfig", "Recipe",
           "SampleConfig", "TrainConfig", "TransformerConfig", "build_section", "load_recipe", "parse_override",
           "recipe_from_dict", "recipe_to_dict", "recipe_to_toml", "section_from_dict"]


_SECTIONS = [f.name for f in dataclasses.fields(Recipe) if f.name != "path"]
# Sections whose other keys belong to the plugin they name ([condition] name, [quantizer] kind).
_PLUGIN_SECTIONS = (ConditionConfig, QuantizerConfig)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a dataclass field type; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise RecipeError(f"{key} = {value!r} is invalid: expected one of {listed}"
                              f"{did_you_mean(str(value), map(str, choices))}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a list of {item.__name__}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a table")
        item = typing.get_args(hint)[1]
        return {k: v if item is Any else _coerce(f"{key}.{k}", v, item) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a number")
        if not math.isfinite(value):
            raise RecipeError(f"{key} = {value!r} is invalid: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a string")
        return value
    raise TypeError(f"unsupported recipe field type {hint!r}")  # a bug in this module, not user input


def build_section(name: str, cls: type, table: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names or key == "options":
            if cls in _PLUGIN_SECTIONS:  # the chosen plugin owns these keys and checks them
                extra[key] = value
                continue
            raise RecipeError(f"{where}: unknown key '{name}.{key}'{did_you_mean(key, names)}")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    if extra:
        kwargs["options"] = extra
    return cls(**kwargs)


def recipe_from_dict(tables: dict[str, Any], where: str = "recipe", path: str = "") -> Recipe:
    """Build a Recipe from parsed TOML tables; `where` names the source in error messages."""
    sections = {}
    hints = typing.get_type_hints(Recipe)
    for name, table in tables.items():
        if name not in _SECTIONS:
            raise RecipeError(f"{where}: unknown section [{name}]{did_you_mean(name, _SECTIONS)}")
        if not isinstance(table, dict):
            raise RecipeError(f"{where}: '{name}' must be a section [{name}], got {table!r}")
        sections[name] = build_section(name, hints[name], table, where)
    return Recipe(**sections, path=path)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`, or `section.table.key=value` for a key of a table such as
    [data.paired] (then the key comes back as "table.key"); the value is read as TOML, or taken as a
    plain string."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise RecipeError(f"--set {text!r}: expected section.key=value (e.g. train.batch_size=8) or "
                          "section.table.key=value (e.g. data.paired.depth=data/drin_depth)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts[0], ".".join(parts[1:]), value


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a TOML recipe and apply `--set section.key=value` overrides."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        table = tables.setdefault(section, {})
        if not isinstance(table, dict):
            raise RecipeError(f"--set {text!r}: '{section}' is not a section")
        if "." in key:  # a key of a table inside the section, e.g. data.paired.depth
            key, inner = key.split(".")
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise RecipeError(f"--set {text!r}: '{section}.{key}' is not a table")
            key = inner
        table[key] = value
    return recipe_from_dict(tables, where=str(path), path=str(path))


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """All sections with every value (defaults included), as plain TOML-able data."""
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(recipe, name))
        options = section.pop("options", None)
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        if options:
            out[name].update(options)
    return out


def section_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Rebuild one config dataclass (e.g. ModelConfig) from a bundle's stored JSON config."""
    name = cls.__name__.removesuffix("Config").lower()
    return build_section(name, cls, values, where)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML, written into each run directory."""
    lines = [f"# resolved recipe (from {recipe.path or 'defaults'}); every value is listed"]
    for name, section in recipe_to_dict(recipe).items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in section.items())
    return "\n".join(lines) + "\n"
