"""From a recipe to its datasets: which images train, which are held out, and their conditions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError, VqtError
from ..plugins import get_plugin_manager
from ..recipes import Recipe, recipe_from_dict
from ..source_options import data_source
from .folders import ImageFolder

HELD_OUT_SEED_OFFSET = 7_919  # generated sources draw held-out items from seeds disjoint from training
GENERATED_ITEMS = 256  # `vqt eval SOURCE` without --n
EVALUATION_SEED = 10_007  # `vqt eval SOURCE`: items disjoint from every recipe's training and held-out seeds


def training_dataset(recipe: Recipe, channels: int, augment: bool = True) -> Dataset:
    """The recipe's training images (random crops and flips when `augment`)."""
    source, options = data_source(recipe.data)
    return source.dataset(recipe.data, options, channels=channels, augment=augment, seed=recipe.train.seed)


def held_out_dataset(recipe: Recipe, channels: int) -> Dataset | None:
    """The recipe's held-out images (centre crops), or None when it names none."""
    source, options = data_source(recipe.data)
    return source.held_out(recipe.data, options, channels=channels, seed=recipe.train.seed + HELD_OUT_SEED_OFFSET)


def evaluation_dataset(data: str, size: int, channels: int, n: int | None = None) -> Dataset:
    """What `vqt eval DATA` reads: a recipe's held-out set (DATA ends in .toml), `n` items of a data
    source that makes its own (a registered name such as 'synthetic' that is not a path on disk), or a
    folder of images. `n` sets the source's `val_n` option: sources that generate items name their
    number so."""
    if data.endswith(".toml"):
        from ..recipes import load_recipe

        recipe = load_recipe(data)
        if n:
            if not _counted(recipe.data.source):
                raise VqtError(f"--n {n}: data source '{recipe.data.source}' of {data} has no data.val_n (--n "
                               "is the number of generated held-out items); leave --n out")
            recipe = load_recipe(data, [f"data.val_n={n}"])
        dataset = held_out_dataset(recipe, channels)
        if dataset is None:
            raise DataError(f"{data} names no held-out data (data.val_root, data.val_images); pass a folder of images instead")
        return dataset
    if data in get_plugin_manager().data_sources() and not Path(data).exists():
        table = {"source": data, "size": size, "num_workers": 0}
        if _counted(data):
            table["val_n"] = n or GENERATED_ITEMS
        config = recipe_from_dict({"data": table}, where=f"vqt eval {data}").data
        source, options = data_source(config)
        dataset = source.held_out(config, options, channels=channels, seed=EVALUATION_SEED)
        if dataset is None:
            raise DataError(f"data source '{data}' reads files: pass the folder of images to evaluate instead")
        return dataset
    return ImageFolder(data, size, channels=channels, train=False)


def _counted(source: str) -> bool:
    """Whether a data source's options hold `val_n`, its number of generated held-out items."""
    options = get_plugin_manager().data_sources()[source].value.Options
    return "val_n" in {f.name for f in dataclasses.fields(options)}


class WithCondition(Dataset):
    """Adds each item's raw condition ("cond_raw"), read from its paired data or derived from its image.

    `condition` is a condition bound to its options (`vqtoolkit.stage2.ConditionSpec`). With
    `as_image`, the raw condition replaces the image: that is what a condition's own VQGAN (e.g. the
    depth VQGAN) trains on.
    """

    def __init__(self, dataset: Dataset, condition: Any, as_image: bool = False) -> None:
        self.dataset, self.condition, self.as_image = dataset, condition, as_image

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        raw = self.condition.from_item(item)
        out = {"image": raw} if self.as_image else {"image": item["image"], "cond_raw": raw}
        out.update({k: item[k] for k in ("name", "skipped") if k in item})
        return out
