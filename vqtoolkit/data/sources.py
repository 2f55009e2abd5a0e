"""The data-source contract: what a recipe's `data.source` names, and the registry plugins add to.

A `DataSource` builds a recipe's training images and its held-out images. The built-in ones (image
folders, paired folders, the synthetic scenes) register through the `vqt_register_data_sources` hook
exactly as a third-party source does. This module imports no torch, so loading plugins stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..config import DataConfig
from ..errors import PluginError
from ..schema import check_value
from ..registry import NoOptions, Registry, check_options

if TYPE_CHECKING:
    from torch.utils.data import Dataset

SHARED_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "options")  # in every [data]


class DataSource:
    """One kind of training data; subclass it and register an instance.

    `Options` is a frozen dataclass of the source's own [data] keys (they sit beside the keys every
    source shares: source, size, num_workers, strict, tokens), every one with a default; its
    `__post_init__` raises RecipeError for bad values. Both methods receive the [data] section and
    the parsed options.

    Items are dicts with at least `"image"`: a float tensor (C, size, size) in [-1, 1], and `"name"`.
    Sources that carry other modalities put them in `"paired"` (modality name -> array aligned with
    the image, or a file path plus the item's `"crop"`); see `vqtoolkit.data.paired_array`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def dataset(self, data: DataConfig, options: Any, *, channels: int, augment: bool, seed: int) -> Dataset:
        """The training images of the recipe's [data] section; random crops and flips when `augment`."""
        raise NotImplementedError

    def held_out(self, data: DataConfig, options: Any, *, channels: int, seed: int) -> Dataset | None:
        """Images kept out of training (centre crops, fixed), for grids and figures; None when the
        recipe names none. `seed` picks them for sources that generate their data."""
        return None


@dataclass(frozen=True)
class CropOptions:
    """The crop keys of sources that read image files: subclass it for a source's `Options`."""

    crop: Literal["resize", "native"] = "resize"  # resize the smallest side to `size`, or crop at `scale`
    scale: float = 1.0  # crop = "native": scale images by this factor first (1 = native resolution)

    def __post_init__(self) -> None:
        check_value(self.scale > 0, "data.scale", self.scale, "a positive number (1 = native resolution)")
        check_value(self.scale == 1.0 or self.crop == "native", "data.scale", self.scale,
                    '1 unless data.crop = "native" (it scales the images native crops are cut from)')

    @property
    def crop_scale(self) -> float | None:
        """The scale native crops are cut at, or None when the smallest side is resized to `size`."""
        return self.scale if self.crop == "native" else None


class DataSourceRegistry(Registry[DataSource]):
    """What `vqt_register_data_sources` receives: call `register(source)` for each source."""

    kind = "data source"
    base = DataSource
    base_path = "vqtoolkit.data.DataSource"

    def validate(self, source: DataSource) -> None:
        where = self.where(source)
        check_options(source.Options, where, "data source")
        taken = [f.name for f in dataclasses.fields(source.Options) if f.name in (*SHARED_KEYS, "options")]
        if taken:
            raise PluginError(f"{where}: option {', '.join(taken)} of {source.Options.__name__} is a key every "
                              f"data source shares ([data] {', '.join(SHARED_KEYS)}); give it another name")
