"""Built-in plugin `shards`: the `webdataset` data source and `vqt shard`.

Both register through the same hooks a third-party plugin uses. This module stays light (no torch, no
webdataset): the reader and the writer load when a recipe's data is built or the command runs, and
without the webdataset package both say how to install it.

    reader.py  shards indexed once, samples read by number (resumable DDP order, workers)
    writer.py  an image folder or a paired tree -> shard-000000.tar ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from vqtoolkit.data import CropOptions, DataSource
from vqtoolkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vqtoolkit.config import DataConfig


@dataclass(frozen=True)
class WebDatasetOptions(CropOptions):
    """The webdataset source's own keys in [data]."""

    urls: str = ""  # training shards: paths or URLs with brace patterns ("shards/shard-{000000..000009}.tar"; a::b)
    val_urls: str = ""  # held-out shards, same form (empty: none)
    cache_dir: str = ""  # where remote shards are copied once (empty: ~/.cache/vqtoolkit/shards)


class WebDatasetSource(DataSource):
    name = "webdataset"
    description = ("WebDataset shards (data.urls, brace patterns, local or remote; held out: data.val_urls) with "
                   "their paired files (key.depth.png, ...); write them with `vqt shard`. Needs "
                   "pip install 'vqtoolkit[webdataset]'.")
    Options = WebDatasetOptions

    def dataset(self, data: DataConfig, options: WebDatasetOptions, *, channels: int, augment: bool,
                seed: int) -> Dataset:
        from .reader import ShardDataset

        return ShardDataset(options.urls, data.size, cache_dir=options.cache_dir, channels=channels, train=augment,
                            strict=data.strict, scale=options.crop_scale)

    def held_out(self, data: DataConfig, options: WebDatasetOptions, *, channels: int, seed: int) -> Dataset | None:
        from .reader import ShardDataset

        if not options.val_urls:
            return None
        return ShardDataset(options.val_urls, data.size, key="data.val_urls", cache_dir=options.cache_dir,
                            channels=channels, train=False, strict=data.strict, scale=options.crop_scale)


def _paired_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    trees = {}
    for value in values:
        name, sep, tree = value.partition("=")
        if not sep or not name or not tree:
            raise click.BadParameter(f"{value!r} is not CONDITION=FOLDER (e.g. depth=data/depth)")
        trees[name] = tree
    return trees


@click.command("shard")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Folder for shard-000000.tar ...")
@click.option("--per-shard", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per shard.")
@click.option("--paired", multiple=True, callback=_paired_option, metavar="CONDITION=FOLDER",
              help="FOLDER is an image tree and this condition's files are in a parallel tree (repeatable).")
@click.option("--force", is_flag=True, help="Replace shards already in the output folder.")
def shard_command(folder: str, out: str, per_shard: int, paired: dict[str, str], force: bool) -> None:
    """Write an image folder or a paired tree (FOLDER/images/ + depth/ ...) as WebDataset shards."""
    from vqtoolkit.cli.options import Bar

    from pathlib import Path

    from .reader import webdataset_module
    from .writer import check_out, folder_entries, pattern, write_shards

    webdataset_module()
    check_out(Path(out), force)
    entries = folder_entries(folder, paired)
    bar = Bar("shard", "img")
    try:
        shards = write_shards(entries, out, per_shard=per_shard, force=force, progress=bar.items(len(entries)))
    finally:
        bar.close()
    click.echo(f"wrote {len(entries)} samples in {len(shards)} shards to {out}")
    click.echo(f'train on them with [data] source = "webdataset", urls = "{pattern(shards)}"')


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(WebDatasetSource())


@hookimpl
def vqt_register_commands(cli: click.Group) -> None:
    cli.add_command(shard_command)
