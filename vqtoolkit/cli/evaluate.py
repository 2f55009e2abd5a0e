"""`vqt eval`: figures and a picture for a stage-1 or a stage-2 bundle on held-out data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ..errors import VqtError
from .options import Bar, device_for


@click.command("eval")
@click.argument("data")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 (VQGAN) or stage-2 (transformer) bundle (.safetensors).")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), default=None,
              help="Stage 2: another stage-2 bundle over the same codes (e.g. the unconditional model), "
                   "scored on the same windows.")
@click.option("--size", type=int, default=None,
              help="Centre-crop size (default: stage 1 the model's resolution, stage 2 its window).")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Number of items of generated data: for DATA 'synthetic' (default 256), or instead of a "
                   "recipe's data.val_n.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), default=None,
              help="PNG to write (default: <model>-eval-<data>.png): stage 1 the worst and best "
                   "reconstructions, stage 2 [condition | samples | ground truth] rows.")
@click.option("--json", "as_json", is_flag=True, help="Print figures as a JSON object.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite an existing grid PNG.")
def eval_command(data: str, model_path: str, baseline_path: str | None, size: int | None, n: int | None,
                 batch_size: int, grid: str | None, as_json: bool, device: str, force: bool) -> None:
    """Evaluate a model on held-out data: DATA is a folder of images, a recipe (.toml: its held-out
    set), or a source that makes its own data (e.g. 'synthetic').

    Stage 1: PSNR, SSIM, LPIPS, codebook use. Stage 2: bits per token and the condition information
    gain (bits with another item's condition minus bits with the true one), fidelity of samples to
    conditions that can be re-derived from images, and --baseline's bits on the same windows."""
    from ..checkpoint import bundle_kind

    name = Path(data.rstrip("/"))
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", (name.stem if name.suffix == ".toml" else name.name) or "data")
    grid_path = Path(grid or f"{Path(model_path).with_suffix('').as_posix()}-eval-{label}.png")
    if grid_path.exists() and not force:
        raise VqtError(f"{grid_path} already exists; pass --force to overwrite or --grid for another path")
    if bundle_kind(model_path) == "stage2":
        figures = _stage2(data, model_path, baseline_path, size, n, device_for(device), grid_path, force)
    else:
        if baseline_path:
            raise VqtError("--baseline compares stage-2 models; this model is a stage-1 bundle")
        figures = _stage1(data, model_path, size, n, batch_size, device_for(device), grid_path, force)
    figures["grid"] = str(grid_path)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for line in _lines(figures):
        click.echo(line)


def _stage1(data: str, model_path: str, size: int | None, n: int | None, batch_size: int, device: str,
            grid_path: Path, force: bool) -> dict[str, Any]:
    from ..data.recipe import evaluation_dataset
    from ..evaluation import evaluate
    from ..images import image_grid, save_png
    from ..stage1 import Stage1Model

    model = Stage1Model.load(model_path, device)
    size = size or model.model_config.resolution
    if size % model.factor or size < 16:
        raise VqtError(f"--size {size}: expected a multiple of the model's factor {model.factor}, at least 16")
    dataset = evaluation_dataset(data, size, model.model_config.in_channels, n)
    bar = Bar("eval", "img")
    try:
        result = evaluate(model, dataset, batch_size, progress=bar.items(len(dataset)))
    finally:
        bar.close()
    rows = [[a, b] for _, _, a, b in result["worst"]] + [[a, b] for _, _, a, b in result["best"]]
    save_png(image_grid(rows), grid_path, force=force)
    return {"kind": "stage1", **{k: v for k, v in result.items() if k not in ("worst", "best")}}


def _stage2(data: str, model_path: str, baseline_path: str | None, size: int | None, n: int | None, device: str,
            grid_path: Path, force: bool) -> dict[str, Any]:
    from ..data.recipe import WithCondition, evaluation_dataset
    from ..evaluation_stage2 import baseline_figures, check_baseline, likelihood_figures, sample_rows
    from ..images import image_grid, save_png
    from ..stage2 import Stage2Model

    model = Stage2Model.load(model_path, device)
    baseline = Stage2Model.load(baseline_path, device) if baseline_path else None
    if baseline is not None:  # before any figure is computed
        check_baseline(model, baseline, baseline_path)
    side = model.window * model.factor
    size = size or side
    if size % model.factor or size < side:
        raise VqtError(f"--size {size}: expected a multiple of the model's factor {model.factor}, at least "
                       f"its window of {side} pixels")
    images = evaluation_dataset(data, size, model.first_stage.model_config.in_channels, n)
    height, width = images[0]["image"].shape[-2:]
    if min(height, width) < side:  # a recipe's held-out set comes at the recipe's data.size
        raise VqtError(f"{data}: held-out images are {width}x{height} pixels, smaller than the model's "
                       f"window of {side}x{side} pixels")
    dataset = WithCondition(images, model.condition) if model.condition is not None else images
    figures: dict[str, Any] = {"kind": "stage2", "n": len(dataset), "window": model.window,
                               "condition": model.condition.name if model.condition else None,
                               "condition_options": model.condition.meta()["options"] if model.condition else None,
                               **likelihood_figures(model, dataset)}
    if baseline is not None:
        figures.update(baseline_figures(model, baseline, images, figures["bits_per_token"], baseline_path))
    rows, fidelity = sample_rows(model, dataset)
    figures["fidelity"] = fidelity
    save_png(image_grid(rows), grid_path, force=force)
    return figures


def _lines(f: dict[str, Any]) -> list[str]:
    if f["kind"] == "stage1":
        lp = "n/a (VGG weights not available)" if f["lpips"] is None else f"{f['lpips']:.4f}"
        return [f"images {f['n']}  PSNR {f['psnr']:.2f} dB  SSIM {f['ssim']:.4f} (data range 2)  LPIPS {lp}",
                f"codebook usage {f['codebook_usage']:.1%}  perplexity {f['perplexity']:.1f}",
                f"worst (top rows) and best reconstructions: {f['grid']}"]
    lines = [f"held-out windows {f['n']} ({f['window']}x{f['window']} codes)  bits per token "
             f"{f['bits_per_token']:.4f}"]
    if "gain_bits" in f:
        lines.append(f"with another item's {f['condition']}: {f['mismatched_bits_per_token']:.4f}  "
                     f"condition information gain {f['gain_bits']:.4f} bits ({f['gain_percent']:.1f} %)")
    if "baseline_bits_per_token" in f:
        lines.append(f"baseline {f['baseline_bits_per_token']:.4f} bits per token: this model is "
                     f"{f['below_baseline_percent']:.1f} % below it")
    for name, value in f["fidelity"].items():
        lines.append(f"fidelity {name} {value:.4f}")
    lines.append(f"[condition | samples | ground truth]: {f['grid']}")
    return lines
