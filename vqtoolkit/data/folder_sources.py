"""The built-in data sources `folder` and `paired`, registered through the plugin hook like any other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from .sources import DataSource

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..recipes import DataConfig


class FolderSource(DataSource):
    name = "folder"
    description = ("Images in a folder tree (data.root) or a list file (data.list_file); held out: data.val_root; "
                   "data.crop, data.scale.")

    def dataset(self, data: DataConfig, *, channels: int, augment: bool, seed: int) -> Dataset:
        from .folders import ImageFolder

        return ImageFolder(data.root, data.size, channels=channels, train=augment, list_file=data.list_file,
                           strict=data.strict, scale=data.crop_scale)

    def held_out(self, data: DataConfig, *, channels: int, seed: int) -> Dataset | None:
        from .folders import ImageFolder

        if not data.val_root:
            return None
        return ImageFolder(data.val_root, data.size, channels=channels, train=False, strict=data.strict,
                           scale=data.crop_scale)


class PairedSource(DataSource):
    name = "paired"
    description = ("data.root/images/ with one folder per modality beside it (depth/, segmentation/, ...), or "
                   "parallel trees: data.images and [data.paired] <condition> = <tree>; data.list_file picks images; "
                   "held out: data.val_root, or data.val_images and [data.val_paired].")

    def dataset(self, data: DataConfig, *, channels: int, augment: bool, seed: int) -> Dataset:
        from .paired import PairedFolder

        return PairedFolder(data.root, data.size, images=data.images, paired=data.paired, list_file=data.list_file,
                            channels=channels, train=augment, strict=data.strict, scale=data.crop_scale)

    def held_out(self, data: DataConfig, *, channels: int, seed: int) -> Dataset | None:
        from .paired import PairedFolder

        if not (data.val_root or data.val_images):
            return None
        return PairedFolder(data.val_root, data.size, images=data.val_images, paired=data.val_paired,
                            channels=channels, train=False, strict=data.strict, scale=data.crop_scale)


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(FolderSource())
    registry.register(PairedSource())
