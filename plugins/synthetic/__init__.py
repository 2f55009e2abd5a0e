"""The built-in synthetic scenes: data source `synthetic` and the command `vqt scene`.

Procedural scenes with exact depth, segmentation, pose and class (see `render.py`) let every task of
the toolkit train and be tested without a download. Items carry those modalities in `item["paired"]`,
aligned with the image, where condition plugins read them as they read a paired folder's files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vqtoolkit.data.sources import DataSource
from vqtoolkit.errors import VqtError
from vqtoolkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vqtoolkit.recipes import DataConfig


class SyntheticSource(DataSource):
    name = "synthetic"
    description = ("Procedural scenes with exact depth, segmentation, pose and class: data.n, data.val_n, "
                   "data.scene_size, data.scene_scale, data.world.")

    def dataset(self, data: DataConfig, *, channels: int, augment: bool, seed: int) -> Dataset:
        from .dataset import SyntheticScenes

        return SyntheticScenes(data.n, data.size, seed=seed, train=augment, channels=channels,
                               scene_size=data.scene_hw, scene_scale=tuple(data.scene_scale) or None,
                               world=data.world)

    def held_out(self, data: DataConfig, *, channels: int, seed: int) -> Dataset | None:
        from .dataset import SyntheticScenes

        return SyntheticScenes(max(data.val_n, 1), data.size, seed=seed, train=False, channels=channels,
                               scene_size=data.scene_hw, scene_scale=tuple(data.scene_scale) or None,
                               world=data.world)


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
