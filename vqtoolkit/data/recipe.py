"""From a recipe to its datasets: which images train, which are held out, and their conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from ..plugins import get_data_source, get_plugin_manager
from ..recipes import DataConfig, Recipe
from .folders import ImageFolder

HELD_OUT_SEED_OFFSET = 7_919  # generated sources draw held-out items from seeds disjoint from training
GENERATED_ITEMS = 256  # `vqt eval SOURCE` without --n
EVALUATION_SEED = 10_007  # `vqt eval SOURCE`: items disjoint from every recipe's training and held-out seeds


def training_dataset(recipe: Recipe, channels: int, augment: bool = True) -> Dataset:
    """The recipe's training images (random crops and flips when `augment`)."""
    source = get_data_source(recipe.data.source)
    return source.dataset(recipe.data, channels=channels, augment=augment, seed=recipe.train.seed)


def held_out_dataset(recipe: Recipe, channels: int) -> Dataset | None:
    """The recipe's held-out images (centre crops), or None when it names none."""
    source = get_data_source(recipe.data.source)
    return source.held_out(recipe.data, channels=channels, seed=recipe.train.seed + HELD_OUT_SEED_OFFSET)


def evaluation_dataset(data: str, size: int, channels: int, n: int | None = None) -> Dataset:
    """What `vqt eval DATA` reads: a recipe's held-out set (DATA ends in .toml), `n` items of a data
    source that makes its own (a registered name such as 'synthetic' that is not a path on disk), or a
    folder of images."""
    if data.endswith(".toml"):
        from ..recipes import load_recipe

        recipe = load_recipe(data, [f"data.val_n={n}"] if n else [])  # generated sources: n held-out items
        dataset = held_out_dataset(recipe, channels)
        if dataset is None:
            raise DataError(f"{data} names no held-out data (data.val_root, data.val_images); pass a folder of images instead")
        return dataset
    if data in get_plugin_manager().data_sources() and not Path(data).exists():
        config = DataConfig(source=data, size=size, val_n=n or GENERATED_ITEMS, num_workers=0)
        dataset = get_data_source(data).held_out(config, channels=channels, seed=EVALUATION_SEED)
        if dataset is None:
            raise DataError(f"data source '{data}' reads files: pass the folder of images to evaluate instead")
        return dataset
    return ImageFolder(data, size, channels=channels, train=False)


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
