"""A recipe's [data] section: the keys every data source shares, and the chosen source's own.

In TOML both sit flat in [data]. `DataConfig` holds the shared keys; the source named by
`data.source` declares the rest as a frozen `Options` dataclass, which checks them (unknown keys,
types, and the cross-checks in its `__post_init__`). What is stored (a run folder's recipe.toml, a
token manifest) holds every option, defaults included, flat again.

Before sources declared their own keys, every [data] section held every source's keys, and run
folders list them all. Such a key that is not the chosen source's is still read when it holds its
old default: it meant nothing for that source then, and means nothing now.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import DataConfig
from .errors import PluginError, RecipeError, did_you_mean
from .schema import build_section, check_value, option_values

from .data.sources import SHARED_KEYS, DataSource

# The keys of the single [data] schema that held every source's keys, with their defaults (as TOML writes them).
RETIRED_DEFAULTS: dict[str, Any] = {
    "root": "", "images": "", "paired": {}, "list_file": "", "val_root": "", "val_images": "", "val_paired": {},
    "crop": "resize", "scale": 1.0, "scene_size": [], "scene_scale": [], "world": "random", "n": 2000, "val_n": 64}


def parse_data(table: dict[str, Any], where: str) -> DataConfig:
    """The [data] table of a recipe (or `where`) as a DataConfig with its source's parsed options."""
    from .plugins import get_plugin_manager

    name = table.get("source", DataConfig.source)
    check_value(isinstance(name, str), "data.source", name, "a string naming a data source (see 'vqt plugins')")
    source = _source(name, where)
    own = [f.name for f in dataclasses.fields(source.Options)]
    shared: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key in SHARED_KEYS:
            shared[key] = value
        elif key in own:
            options[key] = value
        elif not (key in RETIRED_DEFAULTS and value == RETIRED_DEFAULTS[key]):  # (else: an old run's, dropped)
            owners = sorted(n for n, r in get_plugin_manager().data_sources().items()
                            if key in {f.name for f in dataclasses.fields(r.value.Options)})
            if owners:
                raise RecipeError(f"{where}: data.{key} is a key of data source {' and '.join(owners)}, not of "
                                  f"'{name}' (data.source = \"{name}\"); remove it or set data.source = "
                                  f"\"{owners[0]}\"")
            raise RecipeError(f"{where}: unknown key 'data.{key}' for data source '{name}'"
                              f"{did_you_mean(key, [*SHARED_KEYS, *own])} (its keys: "
                              f"{', '.join(own) or 'none'}; every source's: {', '.join(SHARED_KEYS)})")
    parsed = build_section("data", source.Options, options, where)
    return dataclasses.replace(build_section("data", DataConfig, shared, where), options=parsed)


def data_source(data: DataConfig) -> tuple[DataSource, Any]:
    """The recipe's data source and its parsed options: the source's defaults when `data` was built
    in code without them."""
    source = _source(data.source, "recipe")
    if data.options is None:
        return source, source.Options()
    if type(data.options) is not source.Options:
        raise RecipeError(f"data.options is a {type(data.options).__name__}; data source '{data.source}' "
                          f"reads its keys as {source.Options.__name__}")
    return source, data.options


def data_values(data: DataConfig) -> dict[str, Any]:
    """The [data] section flat, every key with its value, the source's options included: what a
    run folder's recipe.toml and the training state store."""
    _, options = data_source(data)
    shared = option_values(data)
    del shared["options"]
    return {**shared, **option_values(options)}


def _source(name: str, where: str) -> DataSource:
    from .plugins import get_data_source

    try:
        return get_data_source(name)
    except PluginError as e:
        raise RecipeError(f"{where}: data.source = {name!r}: {e}") from None
