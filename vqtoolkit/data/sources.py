"""The data-source contract: what a recipe's `data.source` names, and the registry plugins add to.

A `DataSource` builds a recipe's training images and its held-out images. The built-in ones (image
folders, paired folders, the synthetic scenes) register through the `vqt_register_data_sources` hook
exactly as a third-party source does. This module imports no torch, so loading plugins stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import PluginError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..recipes import DataConfig


class DataSource:
    """One kind of training data; subclass it and register an instance.

    Items are dicts with at least `"image"`: a float tensor (C, size, size) in [-1, 1], and `"name"`.
    Sources that carry other modalities put them in `"paired"` (modality name -> array aligned with
    the image, or a file path plus the item's `"crop"`); see `vqtoolkit.data.paired_array`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def dataset(self, data: DataConfig, *, channels: int, augment: bool, seed: int) -> Dataset:
        """The training images of the recipe's [data] section; random crops and flips when `augment`."""
        raise NotImplementedError

    def held_out(self, data: DataConfig, *, channels: int, seed: int) -> Dataset | None:
        """Images kept out of training (centre crops, fixed), for grids and figures; None when the
        recipe names none. `seed` picks them for sources that generate their data."""
        return None


@dataclass(frozen=True)
class RegisteredSource:
    source: DataSource
    plugin: str


class DataSourceRegistry:
    """What `vqt_register_data_sources` receives: call `register(source)` for each source."""

    def __init__(self, store: dict[str, RegisteredSource], plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    def register(self, source: Any) -> None:
        name = getattr(source, "name", "")
        if not isinstance(source, DataSource) or not name:
            raise PluginError(f"plugin {self._plugin} registered {source!r}; expected a "
                              "vqtoolkit.data.DataSource instance with a non-empty name")
        if name in self._store:  # (clashes between plugins are the plugin manager's to report)
            raise PluginError(f"plugin {self._plugin} registers data source '{name}' twice; register each once")
        self._store[name] = RegisteredSource(source, self._plugin)
