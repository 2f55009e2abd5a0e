"""The built-in synthetic scenes: data source `synthetic` and the command `vqt scene`.

Procedural scenes with exact depth, segmentation, pose and class (see `render.py`) let every task of
the toolkit train and be tested without a download. Items carry those modalities in `item["paired"]`,
aligned with the image, where condition plugins read them as they read a paired folder's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import click

from vqtoolkit.data.sources import DataSource
from vqtoolkit.errors import VqtError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.schema import check_value

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vqtoolkit.recipes import DataConfig


@dataclass(frozen=True)
class SyntheticOptions:
    """[data] keys of source = "synthetic"."""

    n: int = 2000  # number of training scenes
    val_n: int = 64  # held-out scenes, drawn from a disjoint seed range (`vqt eval synthetic --n` sets it)
    scene_size: tuple[int, ...] = ()  # [width, height] of the scenes `size` crops are cut from (empty: scenes of `size`)
    scene_scale: tuple[float, ...] = ()  # [lo, hi]: each crop's scene is scene_size times a log-uniform factor in it (empty: 1)
    world: Literal["random", "graded"] = "random"  # random colours, or appearance graded by depth and height
    object_crops: float = 0.0  # with scene_size: the fraction of training crops centred on an object (held-out crops stay uniform)

    def __post_init__(self) -> None:
        check_value(self.n >= 1, "data.n", self.n, "an integer >= 1")
        check_value(self.val_n >= 0, "data.val_n", self.val_n, "an integer >= 0")
        check_value(not self.scene_size or (len(self.scene_size) == 2 and min(self.scene_size) >= 8),
                    "data.scene_size", list(self.scene_size), "[width, height], each >= data.size (and >= 8)")
        check_value(not self.scene_scale or (self.scene_size and len(self.scene_scale) == 2
                                             and 0 < self.scene_scale[0] <= self.scene_scale[1] <= 1),
                    "data.scene_scale", list(self.scene_scale), "[lo, hi] with 0 < lo <= hi <= 1, with data.scene_size set")
        check_value(0.0 <= self.object_crops <= 1.0 and (self.object_crops == 0.0 or bool(self.scene_size)),
                    "data.object_crops", self.object_crops, "a fraction in [0, 1], above 0 only with data.scene_size set")

    @property
    def scene_hw(self) -> tuple[int, int] | None:
        """scene_size as (height, width), or None for whole scenes of `size`."""
        return (self.scene_size[1], self.scene_size[0]) if self.scene_size else None


class SyntheticSource(DataSource):
    name = "synthetic"
    description = ("Procedural scenes with exact depth, segmentation, pose and class: data.n, data.val_n, "
                   "data.scene_size, data.scene_scale, data.world, data.object_crops.")
    Options = SyntheticOptions

    def dataset(self, data: DataConfig, options: SyntheticOptions, *, channels: int, augment: bool,
                seed: int) -> Dataset:
        return _scenes(data, options, options.n, seed=seed, train=augment, channels=channels,
                       object_crops=options.object_crops)

    def held_out(self, data: DataConfig, options: SyntheticOptions, *, channels: int, seed: int) -> Dataset | None:
        return _scenes(data, options, max(options.val_n, 1), seed=seed, train=False, channels=channels, object_crops=0.0)


def _scenes(data: DataConfig, options: SyntheticOptions, n: int, *, seed: int, train: bool, channels: int,
            object_crops: float) -> Dataset:
    from .dataset import SyntheticScenes

    check_value(not options.scene_size or min(options.scene_size) >= data.size, "data.scene_size",
                list(options.scene_size), f"[width, height], each >= data.size ({data.size})")
    return SyntheticScenes(n, data.size, seed=seed, train=train, channels=channels, scene_size=options.scene_hw,
                           scene_scale=tuple(options.scene_scale) or None, world=options.world,
                           object_crops=object_crops)


@click.command("scene")
@click.option("--size", "size_text", default="1024x576", show_default=True, help="WIDTHxHEIGHT in pixels.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--world", type=click.Choice(["random", "graded"]), default="random", show_default=True,
              help="How the scene looks: random colours, or graded by depth and height (as data.world).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def scene_command(size_text: str, seed: int, world: str, out: str, force: bool) -> None:
    """Write a built-in synthetic scene with its exact depth, segmentation, pose and class (inputs for --cond)."""
    from vqtoolkit.cli.options import parse_size

    from .render import render_scene, write_scene

    size = parse_size(size_text)
    if min(size) < 8:
        raise VqtError(f"--size {size_text}: scenes need at least 8x8 pixels")
    paths = write_scene(render_scene(seed, size, world=world), out, force=force)
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(SyntheticSource())


@hookimpl
def vqt_register_commands(cli):
    cli.add_command(scene_command)
