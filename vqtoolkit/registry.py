"""Named, validated registries: what each `vqt_register_*` hook receives.

Every kind of thing a plugin adds (conditions, data sources, and whatever kind comes next) is a
`Registry` subclass that names its base class and adds its own checks in `validate`. Each plugin
fills a registry of its own; the plugin manager merges them and reports clashes between plugins.
This module imports no torch, so loading plugins stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from .errors import PluginError, VqtError

T = TypeVar("T")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered object and the plugin that registered it."""

    value: T
    plugin: str


class Registry(Generic[T]):
    """Call `register(obj)` for each object; `obj.name` is the name recipes and commands use."""

    kind: ClassVar[str] = ""  # what one entry is called in messages: "condition", "data source"
    base: ClassVar[type] = object  # what `register` accepts (instances of it)
    base_path: ClassVar[str] = ""  # where plugin authors import it from, for messages

    def __init__(self, store: dict[str, Registered[T]], plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    def register(self, obj: T) -> None:
        name = getattr(obj, "name", "")
        if isinstance(obj, type) and issubclass(obj, self.base):
            raise PluginError(f"plugin {self._plugin} registered the class {obj.__name__}, not an "
                              f"instance; call registry.register({obj.__name__}())")
        if not isinstance(obj, self.base) or not name:
            raise PluginError(f"plugin {self._plugin} registered {obj!r}; expected a "
                              f"{self.base_path} instance with a non-empty name")
        self.validate(obj)
        if name in self._store:  # (clashes between plugins are the plugin manager's to report)
            raise PluginError(f"plugin {self._plugin} registers {self.kind} '{name}' twice; register each once")
        self._store[name] = Registered(obj, self._plugin)

    def validate(self, obj: T) -> None:
        """Kind-specific checks of an object about to be registered; raise PluginError to refuse it."""

    def where(self, obj: Any) -> str:
        return f"{self.kind} '{obj.name}' from plugin {self._plugin}"


@dataclass(frozen=True)
class NoOptions:
    """The `Options` of a plugin object (a condition, data source or quantizer) without recipe keys of its own."""


def check_options(options: Any, where: str, what: str) -> None:
    """An `Options` class must be a dataclass whose every field has a default that passes its own
    checks: a recipe or bundle that leaves an option out is read with the default."""
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise PluginError(f"{where}: Options is {options!r}; expected a dataclass "
                          "(@dataclass(frozen=True) class Options: key: type = default)")
    for f in dataclasses.fields(options):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PluginError(f"{where}: option '{f.name}' of {options.__name__} has no default; every "
                              f"{what} option needs one ({f.name}: <type> = <default>), so recipes and "
                              "bundles that leave it out still work")
    try:
        options()
    except (VqtError, TypeError, ValueError) as e:
        raise PluginError(f"{where}: {options.__name__}() with its defaults is refused: {e}") from None
