"""A condition's options as complete values: defaults filled in before anything stores or compares them.

A recipe lists only the options that differ from the plugin's defaults. Stored as written, `{}` and
`{standard = "bt601"}` (the default, spelled out) would look different, and a condition stage
trained with one value could be used with another. So run folders, bundles and token manifests
store every option (`option_values`), and what they hold is compared option by option.

Bundles written before options were stored in full hold only the options their recipe set; they
are read with the current defaults of the plugin for the rest, and a note names what was filled in.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .conditions import Condition
from .errors import PluginError, RecipeError
from .plugins import get_condition, get_plugin_manager, provider, registered, skipped_note
from .recipes import Recipe
from .schema import option_values

log = logging.getLogger(__name__)
NO_CONDITION: dict[str, Any] = {"name": "", "options": {}}


def complete_recipe(recipe: Recipe) -> Recipe:
    """The recipe with its [condition] options resolved to every value, defaults included."""
    if not recipe.condition.name:
        return recipe
    condition = get_condition(recipe.condition.name)
    options = condition.parse_options(recipe.condition.options, recipe.path or "recipe")
    full = dataclasses.replace(recipe.condition, options=option_values(options))
    return dataclasses.replace(recipe, condition=full)


def complete_table(table: dict[str, Any], where: str) -> dict[str, Any]:
    """A stored [condition] table (`name`, `stage`, `dropout` and the plugin's keys, as in a run's
    training state) with every option filled in, so that a run started before options were stored in full
    compares equal to the same recipe now."""
    name = table.get("name", "")
    core = {"name": name, "stage": table.get("stage", ""), "dropout": table.get("dropout", 0.0)}
    raw = {k: v for k, v in table.items() if k not in core}
    if not name:
        return {**core, **raw}
    return {**core, **option_values(get_condition(name).parse_options(raw, where))}


def condition_meta(condition: Condition, options: Any) -> dict[str, Any]:
    """What a bundle or token manifest stores about its condition: the name, every option, and the
    plugin that registered it (so that a model whose plugin is missing can say what to install)."""
    return {"name": condition.name, "options": option_values(options), "plugin": provider(condition.name)}


def complete_meta(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """`condition_meta` of the condition named `name` with the options a file or a recipe sets."""
    if not name:
        return dict(NO_CONDITION)
    condition = get_condition(name)
    return condition_meta(condition, condition.parse_options(options, where))


def read_stored(meta: dict[str, Any], where: str) -> tuple[Condition, Any]:
    """The condition and parsed options a bundle or manifest (`where`) stored, filling options it
    lacks with the plugin's current defaults and noting which."""
    name = meta["name"]
    wrote = meta.get("plugin") or {}
    if name not in registered():
        if wrote.get("name") in {p.name for p in get_plugin_manager().failed()}:
            hint = f"fix plugin {wrote['name']} ('vqt plugins' shows its error)"
        elif wrote.get("source") and wrote["source"] != "built-in":
            hint = f"install {wrote['source'].split(' ')[0]} (plugin {wrote.get('name', name)}; version " \
                   f"{wrote['source'].partition(' ')[2] or '?'} wrote it)"
        else:
            hint = f"install the plugin that provides '{name}'"
        raise PluginError(f"{where} needs condition '{name}', which no loaded plugin registers"
                          f"{skipped_note()}; {hint}, then check with 'vqt plugins'")
    condition = get_condition(name)
    stored = meta.get("options") or {}
    options = condition.parse_options(stored, where)
    filled = {k: v for k, v in option_values(options).items() if k not in stored}
    if filled:
        now = provider(name)
        writer = (f"plugin {wrote['name']} ({wrote['source']})" if wrote
                  else "a vqtoolkit that stored only the options its recipe set")
        log.warning("%s: condition options %s are not stored (it was written by %s); they are read as "
                    "the current defaults of plugin %s (%s). If that plugin's defaults changed since, the "
                    "model may not read its condition as it was trained to", where,
                    ", ".join(f"{k} = {v!r}" for k, v in filled.items()), writer, now["name"], now["source"])
    return condition, options


def check_same_options(condition: Condition, have: Any, want: Any, have_where: str, want_where: str,
                       fix: str) -> None:
    """Refuse two option sets of one condition that differ, naming each differing option."""
    a, b = option_values(have), option_values(want)
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        listed = "; ".join(f"condition.{k} = {a.get(k)!r} in {have_where}, {b.get(k)!r} in {want_where}"
                           for k in differ)
        raise RecipeError(f"condition '{condition.name}' options differ: {listed}; {fix}")
