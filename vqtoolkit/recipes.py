"""Recipes: TOML files parsed into the frozen, typed dataclasses of `config.py`.

Every key is type-checked, unknown keys get a "did you mean", `--set section.key=value` overrides any
value, and the resolved recipe is written into the run directory so a run can always be reproduced.
The keys of [data] beyond those every source shares belong to the chosen data source and are checked
by its `Options` (`source_options.py`). The section dataclasses are importable from here too
(`from vqtoolkit.recipes import Recipe`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from .config import (ConditionConfig, DataConfig, LossConfig, ModelConfig, QuantizerConfig, Recipe, SampleConfig,
                     TrainConfig, TransformerConfig)
from .errors import RecipeError, did_you_mean
from .schema import build_section, option_values
from .source_options import data_values, parse_data

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ConditionConfig", "DataConfig", "LossConfig", "ModelConfig", "QuantizerConfig", "Recipe",
           "SampleConfig", "TrainConfig", "TransformerConfig", "build_section", "load_recipe", "parse_override",
           "recipe_from_dict", "recipe_to_dict", "recipe_to_toml", "section_from_dict"]


_SECTIONS = [f.name for f in dataclasses.fields(Recipe) if f.name != "path"]
# Sections whose other keys belong to the plugin they name ([condition] name, [quantizer] kind).
_PLUGIN_SECTIONS = ("condition", "quantizer")


def recipe_from_dict(tables: dict[str, Any], where: str = "recipe", path: str = "") -> Recipe:
    """Build a Recipe from parsed TOML tables; `where` names the source in error messages."""
    sections = {}
    hints = typing.get_type_hints(Recipe)
    for name, table in tables.items():
        if name not in _SECTIONS:
            raise RecipeError(f"{where}: unknown section [{name}]{did_you_mean(name, _SECTIONS)}")
        if not isinstance(table, dict):
            raise RecipeError(f"{where}: '{name}' must be a section [{name}], got {table!r}")
        if name == "data":
            sections[name] = parse_data(table, where)
        else:
            sections[name] = build_section(name, hints[name], table, where, open_keys=name in _PLUGIN_SECTIONS)
    if "data" not in sections:
        sections["data"] = parse_data({}, where)  # the default source's options, so that they are stored
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
        if name == "data":
            out[name] = data_values(recipe.data)
            continue
        section = option_values(getattr(recipe, name))
        options = section.pop("options", None)
        out[name] = {**section, **(options or {})}
    return out


def section_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Rebuild one config dataclass (e.g. ModelConfig) from a bundle's stored JSON config."""
    name = cls.__name__.removesuffix("Config").lower()
    if cls is DataConfig:
        return parse_data(values, where)
    return build_section(name, cls, values, where, open_keys=name in _PLUGIN_SECTIONS)


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
