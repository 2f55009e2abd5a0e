"""Built-in plugin `taming`: `vqt convert` imports taming-transformers checkpoints (`*.ckpt`).

Importing a foreign format is not part of the model library, so it ships as a plugin and adds its command
through `vqt_register_commands`, exactly as a third-party plugin would. This module stays light: the
converter (and torch) is imported only when the command runs.

    safe_pickle.py  a torch zip archive read without running its pickle
    project.py      project.yaml / Lightning hyper_parameters as plain data
    convert.py      architecture inference, taming's condition stages, `convert_checkpoint`
"""

from __future__ import annotations

import click

from vqtoolkit.hookspecs import hookimpl


@click.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output bundle (.safetensors).")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="The reference YAML config published with the checkpoint (read as plain data).")
@click.option("--condition", default=None, help="What a VQGAN condition stage encodes (e.g. depth).")
@click.option("--n-head", type=click.IntRange(min=1), default=None,
              help="Transformer attention heads, when no config says so.")
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="Transformer window in codes per side (default: inferred from block_size; 16 for the "
                   "published models).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def convert_command(checkpoint: str, out: str, config: str | None, condition: str | None, n_head: int | None,
                    window: int | None, force: bool) -> None:
    """Import a taming-transformers checkpoint (.ckpt) safely, without running code from it."""
    from .convert import convert_checkpoint

    report = convert_checkpoint(checkpoint, out, config=config, force=force, condition=condition, n_head=n_head,
                                window=window)
    click.echo(report.summary())
    click.echo(f"wrote {out}")


@hookimpl
def vqt_register_commands(cli: click.Group) -> None:
    cli.add_command(convert_command)
