"""The data-source contract: what a recipe's `data.source` names, and the registry plugins add to.

A `DataSource` builds a recipe's training images and its held-out images. The built-in ones (image
folders, paired folders, the synthetic scenes) register through the `vqt_register_data_sources` hook
exactly as a third-party source does. This module imports no torch, so loading plugins stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry

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


class DataSourceRegistry(Registry[DataSource]):
    """What `vqt_register_data_sources` receives: call `register(source)` for each source."""

    kind = "data source"
    base = DataSource
    base_path = "vqtoolkit.data.DataSource"
