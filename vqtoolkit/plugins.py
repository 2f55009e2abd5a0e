"""Plugin manager: loads the ``vqtoolkit`` entry-point group, built-ins included.

Built-in plugins are entries of the same group as third-party ones (see pyproject.toml), so the
core never imports them. ``VQT_LOAD_PLUGINS`` restricts loading: a comma-separated list of plugin
names to load besides the built-ins (empty: built-ins only; unset: everything installed).
A plugin that fails to import, or whose hook raises, is recorded by name and skipped.

The manager also owns what plugins register (the condition registry, gathered on first use), so
forgetting the manager forgets everything it loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import metadata

from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from .conditions import Condition, ConditionRegistry, Registered
from .data.sources import DataSource, DataSourceRegistry, RegisteredSource
from .errors import PluginError, VqtError, did_you_mean

GROUP = "vqtoolkit"
BUILTIN_DISTRIBUTION = "vqtoolkit"
log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in" or "<distribution> <version>"
    hooks: list[str] = field(default_factory=list)
    error: str = ""  # why it was skipped, if it was


@dataclass
class PluginManager:
    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    _conditions: dict[str, Registered] | None = None
    _data_sources: dict[str, RegisteredSource] | None = None

    def info(self, name: str) -> PluginInfo:
        return next(p for p in self.plugins if p.name == name)

    def call_each(self, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]],
                  conflicts_fatal: bool = True) -> None:
        """Call a hook plugin by plugin with `kwargs_for(plugin_name)`.

        A plugin whose hook raises is reported and skipped; the rest still run. A VqtError (such as
        a duplicate condition name) is a conflict the user must resolve, so it propagates when
        `conflicts_fatal` (commands pass False: a plugin must never break `vqt --help`).
        """
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            wanted = {k: v for k, v in kwargs_for(impl.plugin_name).items() if k in impl.argnames}
            try:
                impl.function(**wanted)
            except Exception as e:  # a broken plugin must not take down the rest
                if isinstance(e, VqtError) and conflicts_fatal:
                    raise
                # a VqtError is already worded for users; any other error needs its type to make sense
                reason = str(e) if isinstance(e, VqtError) else f"{type(e).__name__}: {e}"
                info = self.info(impl.plugin_name)
                info.error = f"{hook_name} failed: {reason}"
                log.warning("plugin %s: %s", impl.plugin_name, info.error)

    def conditions(self) -> dict[str, Registered]:
        """All registered conditions by name (runs `vqt_register_conditions` on first use)."""
        if self._conditions is None:
            store: dict[str, Registered] = {}
            self.call_each("vqt_register_conditions",
                           lambda plugin: {"registry": ConditionRegistry(store, plugin)})
            self._conditions = store
        return self._conditions

    def data_sources(self) -> dict[str, RegisteredSource]:
        """All registered data sources by name (runs `vqt_register_data_sources` on first use)."""
        if self._data_sources is None:
            store: dict[str, RegisteredSource] = {}
            self.call_each("vqt_register_data_sources",
                           lambda plugin: {"registry": DataSourceRegistry(store, plugin)})
            self._data_sources = store
        return self._data_sources


_manager: PluginManager | None = None


def _allowed() -> set[str] | None:
    raw = os.environ.get("VQT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _source(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return "unknown"
    if dist.name == BUILTIN_DISTRIBUTION:
        return "built-in"
    return f"{dist.name} {dist.version}"


def load_plugins() -> PluginManager:
    """Build a fresh plugin manager from the installed entry points."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    infos: list[PluginInfo] = []
    seen: dict[str, str] = {}  # entry-point name -> source
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.name, _source(e))):
        source = _source(ep)
        if ep.name in seen:
            if seen[ep.name] != source:  # (one distribution seen twice on sys.path is not a clash)
                infos.append(PluginInfo(ep.name, source, error=f"not loaded: the plugin name '{ep.name}' "
                                                                 f"is already taken by {seen[ep.name]}"))
            continue
        seen[ep.name] = source
        if allowed is not None and source != "built-in" and ep.name not in allowed:
            continue
        info = PluginInfo(ep.name, source)
        infos.append(info)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as e:  # any import-time failure of a plugin
            info.error = f"failed to load: {type(e).__name__}: {e}"
            log.warning("plugin %s %s", ep.name, info.error)
            continue
        try:
            pm.check_pending()  # a misspelled hook name (e.g. vqt_register_condition)
        except pluggy.PluginValidationError as e:
            pm.unregister(name=ep.name)
            info.error = f"implements an unknown hook: {e}"
            log.warning("plugin %s %s", ep.name, info.error)
            continue
        info.hooks = sorted(_hook_names(pm, ep.name))
    return PluginManager(pm, infos)


def _hook_names(pm: pluggy.PluginManager, name: str) -> list[str]:
    plugin = pm.get_plugin(name)
    return [caller.name for caller in (pm.get_hookcallers(plugin) or [])]


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use (never at import time)."""
    global _manager
    if _manager is None:
        _manager = load_plugins()
    return _manager


def reset() -> None:
    """Forget loaded plugins and what they registered (tests, and after VQT_LOAD_PLUGINS changes)."""
    global _manager
    _manager = None


def registered() -> dict[str, Registered]:
    """All registered conditions by name."""
    return get_plugin_manager().conditions()


def get_condition(name: str) -> Condition:
    """The condition registered as `name`, or an error with a suggestion."""
    conditions = registered()
    if name not in conditions:
        raise PluginError(f"unknown condition '{name}'{did_you_mean(name, conditions)} "
                          "(see 'vqt plugins')")
    return conditions[name].condition


def get_data_source(name: str) -> DataSource:
    """The data source registered as `name` (a recipe's `data.source`), or an error with a suggestion."""
    sources = get_plugin_manager().data_sources()
    if name not in sources:
        raise PluginError(f"unknown data source '{name}'{did_you_mean(name, sources)} (choose from "
                          f"{', '.join(sorted(sources))}; see 'vqt plugins')")
    return sources[name].source


def describe() -> dict[str, Any]:
    """What `vqt plugins` shows: each plugin with its source, hooks, error and conditions, and the
    conditions by name; `error` is a registration conflict that stopped the conditions loading."""
    manager = get_plugin_manager()
    conflict = None
    try:
        conditions = registered()
    except VqtError as e:
        conditions, conflict = {}, str(e)
    try:
        sources = manager.data_sources()
    except VqtError as e:
        sources, conflict = {}, conflict or str(e)
    rows = [{"name": info.name, "source": info.source, "hooks": info.hooks, "error": info.error or None,
             "conditions": sorted(n for n, r in conditions.items() if r.plugin == info.name),
             "data_sources": sorted(n for n, r in sources.items() if r.plugin == info.name)}
            for info in manager.plugins]
    return {"plugins": rows, "error": conflict,
            "conditions": {n: {"plugin": r.plugin, "kind": r.condition.kind,
                               "description": r.condition.description}
                           for n, r in sorted(conditions.items())},
            "data_sources": {n: {"plugin": r.plugin, "description": r.source.description}
                             for n, r in sorted(sources.items())}}
