"""Stage-1 commands: train a VQGAN, encode images to codes, decode codes, evaluate reconstructions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import VqtError
from .options import Bar, device_for, outputs_for, recipe_options, run_training


@click.command("train-stage1")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@recipe_options
def train_stage1_command(recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: bool,
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


@click.command("eval")
@click.argument("data")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 bundle (.safetensors).")
@click.option("--size", type=int, default=None, help="Centre-crop size (default: the model's resolution).")
@click.option("--n", type=click.IntRange(min=1), default=256, show_default=True,
              help="Number of items when DATA names a data source that makes its own (e.g. 'synthetic').")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), default=None,
              help="PNG of the worst and best reconstructions (default: <model>-eval.png).")
@click.option("--json", "as_json", is_flag=True, help="Print figures as a JSON object.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite an existing grid PNG.")
def eval_command(data: str, model_path: str, size: int | None, n: int, batch_size: int,
                 grid: str | None, as_json: bool, device: str, force: bool) -> None:
    """Evaluate a VQGAN on a folder of images (or a generated source such as 'synthetic'): PSNR, SSIM,
    LPIPS, codebook use."""
    from ..data.recipe import evaluation_dataset
    from ..evaluation import evaluate
    from ..images import image_grid, save_png
    from ..stage1 import Stage1Model

    model = Stage1Model.load(model_path, device_for(device))
    size = size or model.model_config.resolution
    if size % model.factor or size < 16:
        raise VqtError(f"--size {size}: expected a multiple of the model's factor {model.factor}, at least 16")
    grid_path = Path(grid or Path(model_path).with_suffix("").as_posix() + "-eval.png")
    if grid_path.exists() and not force:
        raise VqtError(f"{grid_path} already exists; pass --force to overwrite or --grid for another path")
    dataset = evaluation_dataset(data, size, model.model_config.in_channels, n)
    bar = Bar("eval", "img")
    try:
        result = evaluate(model, dataset, batch_size, progress=bar.items(len(dataset)))
    finally:
        bar.close()
    rows = [[a, b] for _, _, a, b in result["worst"]] + [[a, b] for _, _, a, b in result["best"]]
    save_png(image_grid(rows), grid_path, force=force)
    figures = {k: v for k, v in result.items() if k not in ("worst", "best")}
    figures["grid"] = str(grid_path)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    lp = "n/a (VGG weights not available)" if figures["lpips"] is None else f"{figures['lpips']:.4f}"
    click.echo(f"images {figures['n']}  PSNR {figures['psnr']:.2f} dB  SSIM {figures['ssim']:.4f} "
               f"(data range 2)  LPIPS {lp}")
    click.echo(f"codebook usage {figures['codebook_usage']:.1%}  perplexity {figures['perplexity']:.1f}")
    click.echo(f"worst (top rows) and best reconstructions: {grid_path}")
