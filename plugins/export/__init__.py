"""Built-in plugin `export`: `vqt export MODEL --to diffusers -o DIR` writes a VQGAN in another library's format.

Like `vqt convert` (plugin `taming`), writing a foreign format is not part of the model library, so it
ships as a plugin and adds its command through `vqt_register_commands`. This module stays light: the
exporter (and torch) is imported only when the command runs.

    to_diffusers.py  a diffusers `VQModel` folder (config.json + safetensors), exact for our quantizer
"""

from __future__ import annotations

import click

from vqtoolkit.hookspecs import hookimpl


@click.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--to", "target", required=True, type=click.Choice(["diffusers"]),
              help="Format to write: diffusers (a VQModel folder for VQModel.from_pretrained).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Overwrite an earlier export in that folder.")
def export_command(model_path: str, target: str, out: str, force: bool) -> None:
    """Export a VQGAN (a stage-1 bundle, or the first stage of a stage-2 bundle) to another library."""
    from .to_diffusers import export_diffusers

    report = export_diffusers(model_path, out, force=force)
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {out} ({target} VQModel, {report.n_tensors} tensors)")


@hookimpl
def vqt_register_commands(cli: click.Group) -> None:
    cli.add_command(export_command)
