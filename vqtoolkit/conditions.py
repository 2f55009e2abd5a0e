"""Conditioning modalities: the `Condition` base class and the registry plugins add to.

The core never names a modality: it asks the registry for the recipe's `condition.name` and talks
to the object it gets back. Built-in modalities live in the `vqtoolkit_plugins` package and are
registered through the `vqt_register_conditions` hook like any third-party one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .errors import PluginError
from .recipes import did_you_mean

Kind = Literal["spatial", "global", "positional"]


class Condition:
    """One conditioning modality, end to end.

    kind: "spatial" (an index grid aligned with the image grid: segmentation, depth, ...),
    "global" (a few tokens for the whole image: class) or "positional" (coordinates).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[Kind] = "spatial"


@dataclass(frozen=True)
class Registered:
    condition: Condition
    plugin: str


class ConditionRegistry:
    """What `vqt_register_conditions` receives: call `register(condition)` for each modality."""

    def __init__(self, store: dict[str, Registered], plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    def register(self, condition: Condition) -> None:
        name = getattr(condition, "name", "")
        if not isinstance(condition, Condition) or not name:
            raise PluginError(f"plugin {self._plugin} registered {condition!r}; expected a "
                              "vqtoolkit.conditions.Condition instance with a non-empty name")
        if condition.kind not in ("spatial", "global", "positional"):
            raise PluginError(f"condition '{name}' from plugin {self._plugin} has kind "
                              f"{condition.kind!r}; expected 'spatial', 'global' or 'positional'")
        if name in self._store:
            other = self._store[name].plugin
            raise PluginError(f"condition '{name}' is registered twice: by plugin {other} and by "
                              f"plugin {self._plugin}; uninstall one or restrict VQT_LOAD_PLUGINS")
        self._store[name] = Registered(condition, self._plugin)


_registry: dict[str, Registered] | None = None


def registered() -> dict[str, Registered]:
    """All registered conditions by name (runs the hook on first use)."""
    global _registry
    if _registry is None:
        from .plugins import get_plugin_manager

        store: dict[str, Registered] = {}
        get_plugin_manager().call_each(
            "vqt_register_conditions", lambda plugin: {"registry": ConditionRegistry(store, plugin)})
        _registry = store
    return _registry


def get_condition(name: str) -> Condition:
    """The condition registered as `name`, or an error with a suggestion."""
    conditions = registered()
    if name not in conditions:
        raise PluginError(f"unknown condition '{name}'{did_you_mean(name, conditions)} "
                          "(see 'vqt plugins')")
    return conditions[name].condition


def reset_registry() -> None:
    global _registry
    _registry = None
