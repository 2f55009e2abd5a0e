"""Typed sections from TOML tables: the checks every recipe section, condition option set and
data-source option set goes through, and their values written back as plain, complete data.

This module imports neither torch nor the plugin manager, so every registry can use it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

from .errors import RecipeError, did_you_mean


def check_value(ok: bool, key: str, value: Any, expected: str) -> None:
    """Refuse a value that fails a check, naming the key: `data.size = 4 is invalid: expected ...`."""
    if not ok:
        raise RecipeError(f"{key} = {value!r} is invalid: expected {expected}")


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


def build_section(name: str, cls: type, table: dict[str, Any], where: str, open_keys: bool = False) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key and type. With `open_keys`, keys
    that are not fields go into the field `options` as they are, for their owner to check."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names or key == "options":
            if open_keys:  # e.g. [condition]: the condition plugin owns its keys and checks them
                extra[key] = value
                continue
            raise RecipeError(f"{where}: unknown key '{name}.{key}'{did_you_mean(key, names)}")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    if extra:
        kwargs["options"] = extra
    return cls(**kwargs)


def option_values(options: Any) -> dict[str, Any]:
    """Parsed options as complete, JSON-able values (defaults included, tuples as lists): what
    bundles, token manifests and run folders store, and what is compared between them."""
    return {f.name: _plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
