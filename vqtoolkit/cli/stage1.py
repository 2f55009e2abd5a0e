"""Stage-1 commands: train a VQGAN, encode images to codes, decode codes."""

from __future__ import annotations

import click

from .options import Bar, TrainCommand, device_for, outputs_for, recipe_options, run_training


@click.command("train-stage1", cls=TrainCommand)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@recipe_options
def train_stage1_command(recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: str | None,
                         force: bool, device: str | None, strict: bool) -> None:
    """Train a VQGAN (stage 1) from a TOML recipe."""
    from ..train.stage1 import train_stage1

    run_training(train_stage1, "stage 1", recipe_path, overrides, out, resume, force, device, strict)


@click.command("encode")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 bundle (.safetensors).")
@click.option("-o", "--out", required=True, help="Output folder, or a .npy file for one image.")
@click.option("--crop", "fit", flag_value="crop", help="Centre-crop images to a multiple of f.")
@click.option("--pad", "fit", flag_value="pad", help="Pad images to a multiple of f.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def encode_command(images: tuple[str, ...], model_path: str, out: str, fit: str | None, device: str,
                   force: bool) -> None:
    """Encode images to .npy grids of codebook indices (h×w each)."""
    from ..codes import encode_files

    outputs = outputs_for(list(images), out, ".npy", force)
    bar = Bar("encode", "img")
    try:
        encode_files(list(images), outputs, model_path, fit=fit, device=device_for(device),
                     progress=bar.items(len(images)), force=force)
    finally:
        bar.close()
    click.echo(f"wrote {len(outputs)} code file(s) to {out}")


@click.command("decode")
@click.argument("codes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 bundle (.safetensors).")
@click.option("-o", "--out", required=True, help="Output folder, or a .png file for one h×w code grid.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def decode_command(codes: tuple[str, ...], model_path: str, out: str, device: str, force: bool) -> None:
    """Decode .npy code grids (h×w or N×h×w) to PNG images."""
    from ..codes import decode_files

    outputs = outputs_for(list(codes), out, ".png", force)
    bar = Bar("decode", "file")
    try:
        written = decode_files(list(codes), outputs, model_path, device=device_for(device),
                               progress=bar.items(len(codes)), force=force)
    finally:
        bar.close()
    click.echo(f"wrote {written} image(s) to {out}")
