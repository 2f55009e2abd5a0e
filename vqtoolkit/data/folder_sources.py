"""The built-in data sources `folder` and `paired`, registered through the plugin hook like any other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..schema import check_value
from .sources import CropOptions, DataSource

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..config import DataConfig


@dataclass(frozen=True)
class FolderOptions(CropOptions):
    """[data] keys of source = "folder"."""

    root: str = ""  # folder of training images (recursive)
    list_file: str = ""  # alternative to `root`: a text file with one image path per line
    val_root: str = ""  # held-out images for sample grids and eval; empty: none


@dataclass(frozen=True)
class PairedOptions(FolderOptions):
    """[data] keys of source = "paired": the folder keys (root holds images/ and a folder per
    condition; list_file names paths under the image tree) and taming's parallel trees."""

    images: str = ""  # the image tree itself (taming's layout, e.g. data/sflckr_images); empty: root/images
    paired: dict[str, str] = field(default_factory=dict)  # condition name -> its tree beside `images` ([data.paired])
    val_images: str = ""  # a held-out image tree, laid out like `images` (e.g. data/coco/val2017)
    val_paired: dict[str, str] = field(default_factory=dict)  # condition name -> its held-out tree ([data.val_paired])

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, trees in (("paired", self.paired), ("val_paired", self.val_paired)):
            for name, tree in trees.items():
                check_value(bool(tree), f"data.{key}.{name}", tree, "a folder path (the condition's tree, laid out "
                            f"like data.{'val_' if key == 'val_paired' else ''}images)")
        check_value(not (self.val_images and self.val_root), "data.val_images", self.val_images,
                    "to be empty when data.val_root is set (held-out data comes from one of them)")
        check_value(not self.val_paired or bool(self.val_images), "data.val_paired", self.val_paired,
                    "to be empty unless data.val_images names the held-out image tree")


class FolderSource(DataSource):
    name = "folder"
    description = ("Images in a folder tree (data.root) or a list file (data.list_file); held out: data.val_root; "
                   "data.crop, data.scale.")
    Options = FolderOptions

    def dataset(self, data: DataConfig, options: FolderOptions, *, channels: int, augment: bool,
                seed: int) -> Dataset:
        from .folders import ImageFolder

        return ImageFolder(options.root, data.size, channels=channels, train=augment, list_file=options.list_file,
                           strict=data.strict, scale=options.crop_scale)

    def held_out(self, data: DataConfig, options: FolderOptions, *, channels: int, seed: int) -> Dataset | None:
        from .folders import ImageFolder

        if not options.val_root:
            return None
        return ImageFolder(options.val_root, data.size, channels=channels, train=False, strict=data.strict,
                           scale=options.crop_scale)


class PairedSource(DataSource):
    name = "paired"
    description = ("data.root/images/ with one folder per modality beside it (depth/, segmentation/, ...), or "
                   "parallel trees: data.images and [data.paired] <condition> = <tree>; data.list_file picks images; "
                   "held out: data.val_root, or data.val_images and [data.val_paired]; data.crop, data.scale.")
    Options = PairedOptions

    def dataset(self, data: DataConfig, options: PairedOptions, *, channels: int, augment: bool,
                seed: int) -> Dataset:
        from .paired import PairedFolder

        return PairedFolder(options.root, data.size, images=options.images, paired=options.paired,
                            list_file=options.list_file, channels=channels, train=augment, strict=data.strict,
                            scale=options.crop_scale)

    def held_out(self, data: DataConfig, options: PairedOptions, *, channels: int, seed: int) -> Dataset | None:
        from .paired import PairedFolder

        if not (options.val_root or options.val_images):
            return None
        return PairedFolder(options.val_root, data.size, images=options.val_images, paired=options.val_paired,
                            channels=channels, train=False, strict=data.strict, scale=options.crop_scale)


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(FolderSource())
    registry.register(PairedSource())
