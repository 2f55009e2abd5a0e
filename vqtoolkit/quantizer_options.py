"""A [quantizer] section as complete values, and the quantizer module it builds.

A recipe lists only the keys that differ from the chosen quantizer's defaults; bundles and run folders
store every option of it (`quantizer_table`), so a model keeps the options it was trained with.

Before each quantizer declared its own options, one [quantizer] section held the keys of every kind,
and bundles and training states of that time store them all (the gumbel keys of a vq model, and the
other way round). Reading a stored table drops those a kind does not take; the old code kept them at
their defaults, so nothing is lost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .schema import option_values
from .errors import PluginError, RecipeError
from .models.quantize import QuantizerModule
from .plugins import get_plugin_manager, get_quantizer
from .recipes import QuantizerConfig, Recipe, section_from_dict

_SHARED_BEFORE = ("n_codes", "beta", "legacy_beta", "codebook_dim", "l2_normalize", "ema", "ema_decay",
                  "restart_dead", "usage_window", "temperature_start", "temperature_end",
                  "temperature_anneal_steps", "kl_weight")


def complete_quantizer(config: QuantizerConfig, where: str) -> QuantizerConfig:
    """`config` with its quantizer's options checked and filled in to every value (defaults included)."""
    quantizer = get_quantizer(config.kind)
    try:
        options = quantizer.parse_options(config.options, where)
    except RecipeError as e:  # an unknown key may be another kind's option: say whose
        unknown = [k for k in config.options if f"unknown key 'quantizer.{k}'" in str(e)]
        key, owners = next(((k, _owners(k)) for k in unknown if _owners(k)), ("", []))
        if not owners:
            raise
        raise RecipeError(f"{e} (quantizer.{key} is an option of quantizer.kind = "
                          f"{' or '.join(map(repr, owners))}, but quantizer.kind = {config.kind!r})") from None
    return dataclasses.replace(config, options=option_values(options))


def _owners(key: str) -> list[str]:
    """The registered quantizers that take option `key`."""
    return sorted(name for name, entry in get_plugin_manager().registered("quantizers").items()
                  if key in {f.name for f in dataclasses.fields(entry.value.Options)})


def complete_recipe_quantizer(recipe: Recipe) -> Recipe:
    """The recipe with its [quantizer] options resolved to every value."""
    return dataclasses.replace(recipe, quantizer=complete_quantizer(recipe.quantizer, recipe.path or "recipe"))


def read_stored(table: dict[str, Any], where: str) -> QuantizerConfig:
    """The completed config of a [quantizer] table a bundle or training state stored (flat, as in a
    recipe), dropping the keys of other kinds that tables written before per-kind options hold."""
    config = section_from_dict(QuantizerConfig, table, where)
    options = get_quantizer(config.kind).Options
    own = {f.name for f in dataclasses.fields(options)}
    kept = {k: v for k, v in config.options.items() if k in own or k not in _SHARED_BEFORE}
    return complete_quantizer(dataclasses.replace(config, options=kept), where)


def quantizer_table(config: QuantizerConfig) -> dict[str, Any]:
    """A [quantizer] config as bundles store it: one flat table, `kind`, `embed_dim` and the options."""
    return {"kind": config.kind, "embed_dim": config.embed_dim, **config.options}


def build_quantizer(config: QuantizerConfig, where: str = "recipe") -> QuantizerModule:
    """The quantizer module a (completed or not) [quantizer] config describes."""
    quantizer = get_quantizer(config.kind)
    options = quantizer.parse_options(complete_quantizer(config, where).options, where)
    module = quantizer.build(options, config.embed_dim)
    plugin = get_plugin_manager().registered("quantizers")[config.kind].plugin
    if not isinstance(module, QuantizerModule):
        raise PluginError(f"quantizer '{config.kind}' of plugin {plugin} built {type(module).__name__}; expected "
                          "a vqtoolkit.models.quantize.QuantizerModule")
    if module.embed_dim != config.embed_dim or not (isinstance(module.n_codes, int) and module.n_codes >= 2):
        raise PluginError(f"quantizer '{config.kind}' of plugin {plugin} built a module with embed_dim = "
                          f"{module.embed_dim!r} and n_codes = {module.n_codes!r}; expected embed_dim = "
                          f"{config.embed_dim} and an integer n_codes >= 2")
    return module
