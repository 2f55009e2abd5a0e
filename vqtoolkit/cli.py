"""The `vqt` command line: a thin click layer over the library.

It parses arguments, calls the library, draws progress bars, and turns every `VqtError` into
``Error: <message>`` with a non-zero exit code. `--debug` or `VQT_DEBUG=1` shows tracebacks instead.
Plugins add commands through the `vqt_register_commands` hook, loaded when commands are listed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import VqtError


class VqtGroup(click.Group):
    """Loads plugin commands lazily and reports VqtError without a traceback."""

    _plugins_from: object = None  # the plugin manager whose commands were added

    def _add_plugin_commands(self) -> None:
        from .plugins import get_plugin_manager

        manager = get_plugin_manager()
        if self._plugins_from is manager:
            return
        self._plugins_from = manager
        manager.call_each("vqt_register_commands", lambda plugin: {"cli": self}, conflicts_fatal=False)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VqtError as e:
            if _debug(ctx):
                raise
            raise click.ClickException(str(e)) from None


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("VQT_DEBUG", "") not in ("", "0")


@click.group(cls=VqtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqt")
@click.option("--debug", is_flag=True, help="Show full tracebacks (also VQT_DEBUG=1).")
def cli(debug: bool) -> None:
    """vqtoolkit: Taming Transformers (VQGAN + GPT) for high-resolution image synthesis.

    Stage 1 learns a VQGAN that turns images into grids of codebook indices; stage 2 learns a
    transformer over those indices; `sample` draws images of any size with a sliding window.
    """


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins, where they come from, their hooks and conditions."""
    from .conditions import registered
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    conflict = ""
    try:
        conditions = registered()
    except VqtError as e:
        conditions, conflict = {}, str(e)
    rows = []
    for info in manager.plugins:
        rows.append({
            "name": info.name, "source": info.source, "hooks": info.hooks, "error": info.error or None,
            "conditions": sorted(n for n, r in conditions.items() if r.plugin == info.name),
        })
    if as_json:
        click.echo(json.dumps({"plugins": rows, "error": conflict or None,
                               "conditions": {n: {"plugin": r.plugin, "kind": r.condition.kind,
                                                  "description": r.condition.description}
                                              for n, r in sorted(conditions.items())}}, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [6])
    click.echo(f"{'PLUGIN':<{width}}  {'SOURCE':<18}  HOOKS / CONDITIONS")
    for r in rows:
        detail = f"error: {r['error']}" if r["error"] else ", ".join(r["hooks"])
        if r["conditions"]:
            detail += "  [" + ", ".join(r["conditions"]) + "]"
        click.echo(f"{r['name']:<{width}}  {r['source']:<18}  {detail}")
    if conditions:
        click.echo("\nCONDITIONS")
        for name, r in sorted(conditions.items()):
            click.echo(f"  {name:<{width}}  {r.condition.kind:<10}  {r.condition.description}")
    if conflict:
        click.echo(f"\nError: {conflict}", err=True)


class _Bar:
    """A tqdm progress bar (rate and ETA) drawn on stderr; created on the first update."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def steps(self, step: int, total: int, logs: dict[str, float]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step - 1, desc=self.desc, unit=self.unit,
                            dynamic_ncols=True, file=sys.stderr)
        self.bar.update(1)
        shown = {k: logs[k] for k in ("loss", "rec_loss", "usage", "d_loss") if k in logs}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    def items(self, total: int) -> Any:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True, file=sys.stderr)
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _recipe_options(f: Any) -> Any:
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override a recipe value (repeatable), e.g. --set train.batch_size=8.")(f)
    f = click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder (default: runs/<recipe name>).")(f)
    f = click.option("--resume", is_flag=True, help="Continue the run in the run folder.")(f)
    f = click.option("--force", is_flag=True, help="Start over, replacing a previous run's files.")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="Override train.device.")(f)
    f = click.option("--strict", is_flag=True, help="Stop at the first unreadable image (data.strict).")(f)
    return f


@cli.command("train-stage1")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@_recipe_options
def train_stage1_command(recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: bool,
                         force: bool, device: str | None, strict: bool) -> None:
    """Train a VQGAN (stage 1) from a TOML recipe."""
    from .train.stage1 import train_stage1

    _train(train_stage1, "stage 1", recipe_path, overrides, out, resume, force, device, strict)


def _train(train: Any, desc: str, recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: bool,
           force: bool, device: str | None, strict: bool) -> None:
    """Both train-* commands: load the recipe, run with a progress bar, report on rank 0."""
    from .recipes import load_recipe

    recipe = load_recipe(recipe_path, overrides + (("data.strict=true",) if strict else ()))
    bar = _Bar(desc, "step")
    try:
        summary = train(recipe, out or f"runs/{recipe.stem}", resume=resume, force=force, device=device,
                        progress=bar.steps)
    finally:
        bar.close()
    if int(os.environ.get("RANK", "0")) == 0:
        _report(summary)


def _report(summary: dict[str, Any]) -> None:
    click.echo(f"finished at step {summary['step']}: model {summary['bundle']}")
    if summary.get("skipped_images"):
        names = summary["skipped_images"]
        click.echo(f"skipped {len(names)} unreadable image(s), e.g. {names[0]} (--strict stops at the first)")
    figures = {k: summary[k] for k in ("psnr", "codebook_usage", "perplexity", "bits_per_token") if k in summary}
    if figures:
        click.echo("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


def _outputs(inputs: list[str], out: str, suffix: str, force: bool) -> list[Path]:
    """One output per input: OUT itself when it ends in `suffix` (one input), else OUT/<stem><suffix>."""
    target = Path(out)
    if target.suffix == suffix:
        if len(inputs) != 1:
            raise VqtError(f"-o {out} names one file but {len(inputs)} inputs were given; "
                           "pass a folder to -o")
        paths = [target]
    else:
        stems = [Path(i).stem for i in inputs]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise VqtError(f"several inputs share the name {dupes[0]!r}; their outputs would collide in {out}")
        paths = [target / f"{stem}{suffix}" for stem in stems]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise VqtError(f"{existing[0]} already exists ({len(existing)} outputs in all); "
                       "pass --force to overwrite")
    return paths


@cli.command("encode")
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
    from .api import encode_files

    outputs = _outputs(list(images), out, ".npy", force)
    bar = _Bar("encode", "img")
    try:
        encode_files(list(images), outputs, model_path, fit=fit, device=_device(device),
                     progress=bar.items(len(images)), force=force)
    finally:
        bar.close()
    click.echo(f"wrote {len(outputs)} code file(s) to {out}")


@cli.command("decode")
@click.argument("codes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 bundle (.safetensors).")
@click.option("-o", "--out", required=True, help="Output folder, or a .png file for one h×w code grid.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def decode_command(codes: tuple[str, ...], model_path: str, out: str, device: str, force: bool) -> None:
    """Decode .npy code grids (h×w or N×h×w) to PNG images."""
    from .api import decode_files

    outputs = _outputs(list(codes), out, ".png", force)
    bar = _Bar("decode", "file")
    try:
        written = decode_files(list(codes), outputs, model_path, device=_device(device),
                               progress=bar.items(len(codes)), force=force)
    finally:
        bar.close()
    click.echo(f"wrote {written} image(s) to {out}")


@cli.command("eval")
@click.argument("data")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-1 bundle (.safetensors).")
@click.option("--size", type=int, default=None, help="Centre-crop size (default: the model's resolution).")
@click.option("--n", type=click.IntRange(min=1), default=256, show_default=True,
              help="Number of scenes when DATA is 'synthetic'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), default=None,
              help="PNG of the worst and best reconstructions (default: <model>-eval.png).")
@click.option("--json", "as_json", is_flag=True, help="Print figures as a JSON object.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite an existing grid PNG.")
def eval_command(data: str, model_path: str, size: int | None, n: int, batch_size: int,
                 grid: str | None, as_json: bool, device: str, force: bool) -> None:
    """Evaluate a VQGAN on a folder of images (or 'synthetic'): PSNR, SSIM, LPIPS, codebook use."""
    from .api import Stage1Model, evaluate
    from .data import build_dataset
    from .images import image_grid, save_png

    model = Stage1Model.load(model_path, _device(device))
    size = size or model.model_config.resolution
    if size % model.factor or size < 16:
        raise VqtError(f"--size {size}: expected a multiple of the model's factor {model.factor}, at least 16")
    grid_path = Path(grid or Path(model_path).with_suffix("").as_posix() + "-eval.png")
    if grid_path.exists() and not force:
        raise VqtError(f"{grid_path} already exists; pass --force to overwrite or --grid for another path")
    source = "synthetic" if data == "synthetic" else "folder"
    dataset = build_dataset(source, "" if source == "synthetic" else data, size,
                            channels=model.model_config.in_channels, train=False, n=n, seed=10_007,
                            list_file="", strict=False)
    bar = _Bar("eval", "img")
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


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise VqtError("--device cuda, but no CUDA device is available; use --device cpu or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@cli.command("tokenize")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", default="", help="Stage-1 bundle (default: transformer.first_stage).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the token shards.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Replace existing shards.")
def tokenize_command(recipe_path: str, model_path: str, out: str, overrides: tuple[str, ...], batch_size: int,
                     device: str, force: bool) -> None:
    """Encode a recipe's images (and conditions) into token shards for train-stage2 (resumable)."""
    from .recipes import load_recipe
    from .tokens import tokenize_recipe

    recipe = load_recipe(recipe_path, overrides)
    bar = _Bar("tokenize", "img")
    try:
        manifest = tokenize_recipe(recipe, out, model_path=model_path, device=_device(device),
                                   batch_size=batch_size, progress_factory=bar.items, force=force)
    finally:
        bar.close()
    click.echo(f"wrote {manifest['count']} token grids of {manifest['grid'][1]}x{manifest['grid'][0]} to {out}; "
               f"train with: vqt train-stage2 RECIPE --set data.tokens={out}")


@cli.command("train-stage2")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@_recipe_options
def train_stage2_command(recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: bool,
                         force: bool, device: str | None, strict: bool) -> None:
    """Train the transformer (stage 2) from a TOML recipe."""
    from .train.stage2 import train_stage2

    _train(train_stage2, "stage 2", recipe_path, overrides, out, resume, force, device, strict)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width), with errors that say what was expected."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise VqtError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1024x576")
    width, height = (int(p) for p in parts)
    if width < 1 or height < 1:
        raise VqtError(f"--size {text!r}: width and height must be positive")
    return height, width


@cli.command("sample")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-2 bundle (.safetensors).")
@click.option("--cond", default=None, help="Condition input, usually a file (e.g. depth.png).")
@click.option("--class", "class_label", type=int, default=None, help="Class label (class-conditional models).")
@click.option("--size", "size_text", required=True, help="Output size WIDTHxHEIGHT in pixels, e.g. 1024x576.")
@click.option("--n", type=int, default=1, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top-k", type=int, default=None, help="Sample among the k most likely codes.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling mass in (0, 1].")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--window-stride", type=int, default=None,
              help="Sliding-window step in codes: 1 is the reference behaviour (slowest); default half the "
                   "window (see benchmarks/README.md for speed and quality).")
@click.option("--cfg-scale", type=float, default=1.0, show_default=True,
              help="Classifier-free guidance scale (models trained with label dropout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-o", "--out", required=True, help="Output folder, or a .png file when --n 1.")
@click.option("--codes", "keep_codes", is_flag=True, help="Also write the sampled indices (.npy).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def sample_command(model_path: str, cond: str | None, class_label: int | None, size_text: str, n: int,
                   seed: int, top_k: int | None, top_p: float | None, temperature: float,
                   window_stride: int | None,
                   cfg_scale: float, batch_size: int, out: str, keep_codes: bool, device: str,
                   force: bool) -> None:
    """Draw images of any size (sliding window beyond the training window)."""
    from .fileio import all_or_nothing, check_new
    from .generator import Stage2Model
    from .images import image_grid, save_codes, save_png, to_uint8

    size = parse_size(size_text)
    if n < 1:
        raise VqtError(f"--n must be at least 1, got {n}")
    if cond is not None and class_label is not None:
        raise VqtError("pass either --cond or --class, not both")
    target = Path(out)
    single = target.suffix.lower() == ".png"
    if single and n != 1:
        raise VqtError(f"-o {out} names one file but --n is {n}; pass a folder")
    paths = [target] if single else [target / f"sample_{i:04d}.png" for i in range(n)]
    codes_path = target.with_suffix(".npy") if single else target / "codes.npy"
    for p in paths + ([codes_path] if keep_codes else []):
        check_new(p, force)
    model = Stage2Model.load(model_path, _device(device))
    grid = model.check_size(*size)
    raw = None
    spec = cond if cond is not None else (None if class_label is None else str(class_label))
    if spec is not None:
        if model.condition is None:
            raise VqtError("this model is unconditional; drop --cond/--class")
        raw = model.condition.condition.read(spec, size, model.condition.options)
        if raw.ndim == 3 and not single:
            check_new(target / "grid.png", force)
    bar = _Bar("sample", "tok")
    state = {"last": 0}

    def progress(done: int, total: int) -> None:
        if bar.bar is None:
            bar.items(total)
        bar.bar.update(done - state["last"])
        state["last"] = done

    try:
        images, codes = model.sample(n, size, cond=raw, seed=seed, temperature=temperature, top_k=top_k,
                                     top_p=top_p, window_stride=window_stride, progress=progress,
                                     batch_size=batch_size, cfg_scale=cfg_scale)
    finally:
        bar.close()
    with all_or_nothing() as written:
        for img, p in zip(images, paths):
            written.append(save_png(to_uint8(img), p, force=force))
        if keep_codes:
            written.append(save_codes(codes.cpu().numpy(), codes_path, force=force))
        if raw is not None and raw.ndim == 3 and not single:
            rendered = model.condition.condition.render(raw, model.condition.options)
            grid_png = image_grid([[rendered] + [to_uint8(i) for i in images[:3]]])
            written.append(save_png(grid_png, target / "grid.png", force=force))
    click.echo(f"wrote {n} sample(s) of {size[1]}x{size[0]} ({grid[1]}x{grid[0]} codes) to {out}")


@cli.command("scene")
@click.option("--size", "size_text", default="1024x576", show_default=True, help="WIDTHxHEIGHT in pixels.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def scene_command(size_text: str, seed: int, out: str, force: bool) -> None:
    """Write a built-in synthetic scene with its exact depth, segmentation, pose and class (inputs for --cond)."""
    from .synthetic import render_scene, write_scene

    size = parse_size(size_text)
    if min(size) < 8:
        raise VqtError(f"--size {size_text}: scenes need at least 8x8 pixels")
    paths = write_scene(render_scene(seed, size), out, force=force)
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="vqt")


if __name__ == "__main__":  # `python -m vqtoolkit.cli`, e.g. under torchrun
    main()
