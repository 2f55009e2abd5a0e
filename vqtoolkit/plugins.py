"""Plugin manager: loads the ``vqtoolkit`` entry-point group, built-ins included.

Built-in plugins are entries of the same group as third-party ones (see pyproject.toml), so the
core never imports them. ``VQT_LOAD_PLUGINS`` restricts loading: a comma-separated list of plugin
names to load besides the built-ins (empty: built-ins only; unset: everything installed).
A plugin that fails to import, whose hook raises, or whose registration is invalid or takes a
name already registered is recorded by name with the reason and skipped; the others keep working.

The manager also owns what plugins register (conditions, data sources, quantizers: each gathered on
first use), so forgetting the manager forgets everything it loaded.
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
from .conditions import Condition, ConditionRegistry
from .data.sources import DataSource, DataSourceRegistry
from .quantizers import Quantizer, QuantizerRegistry
from .registry import Registered, Registry
from .errors import PluginError, VqtError, did_you_mean

GROUP = "vqtoolkit"
# What plugins register, by the attribute `vqt plugins` lists it under: (hook, registry class).
KINDS: dict[str, tuple[str, type[Registry[Any]]]] = {
    "conditions": ("vqt_register_conditions", ConditionRegistry),
    "data_sources": ("vqt_register_data_sources", DataSourceRegistry),
    "quantizers": ("vqt_register_quantizers", QuantizerRegistry),
}
BUILTIN_DISTRIBUTION = "vqtoolkit"
log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in" or "<distribution> <version>"
    hooks: list[str] = field(default_factory=list)
    error: str = ""  # why it (or one of its hooks) was skipped, if it was

    def fail(self, reason: str) -> None:
        """Record (and log, once) why this plugin or one of its hooks was skipped."""
        self.error = f"{self.error}; {reason}" if self.error else reason
        log.warning("plugin %s: %s", self.name, reason)


@dataclass
class PluginManager:
    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    _registered: dict[str, dict[str, Registered[Any]]] = field(default_factory=dict)

    def info(self, name: str) -> PluginInfo:
        return next(p for p in self.plugins if p.name == name)

    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to load, or whose hook was skipped."""
        return [p for p in self.plugins if p.error]

    def call_each(self, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]],
                  accept: Callable[[str, bool], str] | None = None) -> None:
        """Call a hook plugin by plugin, built-ins first, with `kwargs_for(plugin_name)`.

        A plugin whose hook raises is reported and skipped; the rest still run. `accept(plugin, ok)`,
        called after each call, keeps what the plugin added (ok: the hook returned) or discards it,
        and returns why it refused (a clash) or "". Built-ins go first so that a third party
        clashing with one is the one skipped.
        """
        order = {info.name: (info.source != "built-in", i) for i, info in enumerate(self.plugins)}
        hook = getattr(self.pm.hook, hook_name)
        for impl in sorted(hook.get_hookimpls(), key=lambda impl: order[impl.plugin_name]):
            wanted = {k: v for k, v in kwargs_for(impl.plugin_name).items() if k in impl.argnames}
            try:
                impl.function(**wanted)
            except Exception as e:  # a broken plugin must not take down the rest
                # a VqtError is already worded for users; any other error needs its type to make sense
                reason = str(e) if isinstance(e, VqtError) else f"{type(e).__name__}: {e}"
                self.info(impl.plugin_name).fail(f"{hook_name} failed, so it was skipped: {reason}")
                if accept:
                    accept(impl.plugin_name, False)
                continue
            refused = accept(impl.plugin_name, True) if accept else ""
            if refused:
                self.info(impl.plugin_name).fail(f"{hook_name} was skipped: {refused}")

    def registered(self, kind: str) -> dict[str, Registered[Any]]:
        """Everything of one kind (a key of KINDS) by name; runs its hook on first use. Each plugin
        fills a registry of its own, merged into the whole only when the hook succeeds and none of
        its names is taken, so a failing plugin leaves nothing half-registered and never removes
        another's entries."""
        if kind in self._registered:
            return self._registered[kind]
        hook_name, registry = KINDS[kind]
        store: dict[str, Registered[Any]] = {}
        pending: dict[str, dict[str, Registered[Any]]] = {}

        def kwargs_for(plugin: str) -> dict[str, Any]:
            pending[plugin] = {}
            return {"registry": registry(pending[plugin], plugin)}

        def accept(plugin: str, ok: bool) -> str:
            own = pending.pop(plugin)
            if not ok:
                return ""
            taken = sorted(set(own) & set(store))
            if taken:
                other = store[taken[0]].plugin
                return (f"{registry.kind} '{taken[0]}' is already registered by plugin {other} "
                        f"({self.info(other).source}); rename yours, or uninstall one of the two plugins "
                        "(or restrict VQT_LOAD_PLUGINS)")
            store.update(own)
            return ""

        self.call_each(hook_name, kwargs_for, accept)
        self._registered[kind] = store
        return store

    def conditions(self) -> dict[str, Registered[Condition]]:
        """All registered conditions by name."""
        return self.registered("conditions")

    def data_sources(self) -> dict[str, Registered[DataSource]]:
        """All registered data sources by name."""
        return self.registered("data_sources")


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
            info.fail(f"failed to load: {type(e).__name__}: {e}")
            continue
        unknown = _unknown_hooks(pm, module, ep.name)
        if unknown:
            pm.unregister(name=ep.name)
            info.fail(unknown)
            continue
        info.hooks = sorted(_hook_names(pm, ep.name))
    return PluginManager(pm, infos)


def _hook_names(pm: pluggy.PluginManager, name: str) -> list[str]:
    plugin = pm.get_plugin(name)
    return [caller.name for caller in (pm.get_hookcallers(plugin) or [])]


def _unknown_hooks(pm: pluggy.PluginManager, module: Any, name: str) -> str:
    """Why a plugin's hooks cannot work: a marked function no hook is called (a misspelling), or a
    function named like a hook without the @hookimpl marker (pluggy would silently ignore it).
    Empty when all is well."""
    known = [n for n in vars(hookspecs) if n.startswith("vqt_")]
    problems = [f"implements the unknown hook '{caller.name}'{did_you_mean(caller.name, known)}"
                for caller in pm.get_hookcallers(pm.get_plugin(name)) or [] if caller.spec is None]
    marked = set(_hook_names(pm, name))
    problems += [f"its function '{attr}' is not marked with @hookimpl (from vqtoolkit import hookimpl), "
                 "so it would never be called"
                 for attr, value in sorted(vars(module).items())
                 if attr in known and attr not in marked and callable(value)]
    return "; ".join(problems) + ("; the plugin was skipped" if problems else "")


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


def registered() -> dict[str, Registered[Condition]]:
    """All registered conditions by name."""
    return get_plugin_manager().conditions()


def skipped_note() -> str:
    """'; plugin x failed and was skipped', or '' when none failed: a missing name may be theirs."""
    failed = [p.name for p in get_plugin_manager().failed()]
    if not failed:
        return ""
    many = len(failed) > 1
    return f"; plugin{'s' * many} {', '.join(failed)} failed and {'were' if many else 'was'} skipped"


def get_condition(name: str) -> Condition:
    """The condition registered as `name`, or an error with a suggestion."""
    conditions = registered()
    if name not in conditions:
        raise PluginError(f"unknown condition '{name}'{did_you_mean(name, conditions)}{skipped_note()} "
                          "(see 'vqt plugins')")
    return conditions[name].value


def provider(name: str) -> dict[str, str]:
    """Which plugin registered condition `name`, and its source ("built-in", "vqt-foo 1.2"): stored
    in bundles so that a model whose plugin is missing can name what to install."""
    plugin = registered()[name].plugin
    return {"name": plugin, "source": get_plugin_manager().info(plugin).source}


def get_data_source(name: str) -> DataSource:
    """The data source registered as `name` (a recipe's `data.source`), or an error with a suggestion."""
    sources = get_plugin_manager().data_sources()
    if name not in sources:
        raise PluginError(f"unknown data source '{name}'{did_you_mean(name, sources)}{skipped_note()} (choose "
                          f"from {', '.join(sorted(sources))}; see 'vqt plugins')")
    return sources[name].value


def get_quantizer(name: str) -> Quantizer:
    """The quantizer registered as `name` (a recipe's `quantizer.kind`), or an error with a suggestion."""
    quantizers = get_plugin_manager().registered("quantizers")
    if name not in quantizers:
        raise PluginError(f"unknown quantizer.kind '{name}'{did_you_mean(name, quantizers)}{skipped_note()} "
                          f"(choose from {', '.join(sorted(quantizers))}, or install the plugin that provides "
                          f"'{name}'; see 'vqt plugins')")
    return quantizers[name].value


def describe() -> dict[str, Any]:
    """What `vqt plugins` shows: each plugin with its source, hooks, error and what it registered of
    each kind; everything registered, kind by kind and by name; and `failed`, the plugins skipped."""
    manager = get_plugin_manager()
    kinds = {kind: manager.registered(kind) for kind in KINDS}
    rows = [{"name": info.name, "source": info.source, "hooks": info.hooks, "error": info.error or None,
             **{kind: sorted(n for n, r in entries.items() if r.plugin == info.name)
                for kind, entries in kinds.items()}}
            for info in manager.plugins]
    listing = {kind: {n: {"plugin": r.plugin, "description": r.value.description}
                      for n, r in sorted(entries.items())}
               for kind, entries in kinds.items()}
    for name, entry in listing["conditions"].items():
        entry["kind"] = kinds["conditions"][name].value.kind
    return {"plugins": rows, "failed": [info.name for info in manager.failed()], **listing}
