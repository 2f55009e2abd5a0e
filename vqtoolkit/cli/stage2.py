"""Stage-2 commands: tokenize a data set, train the transformer, sample images of any size."""

from __future__ import annotations

from pathlib import Path

import click

from ..anchors import ANCHORS
from ..errors import VqtError
from .options import Bar, TrainCommand, device_for, parse_size, recipe_options, run_training


@click.command("tokenize")
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
    from ..recipes import load_recipe
    from ..train.tokenize import tokenize_recipe

    recipe = load_recipe(recipe_path, overrides)
    bar = Bar("tokenize", "img")
    try:
        manifest = tokenize_recipe(recipe, out, model_path=model_path, device=device_for(device),
                                   batch_size=batch_size, progress_factory=bar.items, force=force)
    finally:
        bar.close()
    click.echo(f"wrote {manifest['count']} token grids of {manifest['grid'][1]}x{manifest['grid'][0]} to {out}; "
               f"train with: vqt train-stage2 RECIPE --set data.tokens={out}")


@click.command("train-stage2", cls=TrainCommand)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@recipe_options
def train_stage2_command(recipe_path: str, overrides: tuple[str, ...], out: str | None, resume: str | None,
                         force: bool, device: str | None, strict: bool) -> None:
    """Train the transformer (stage 2) from a TOML recipe."""
    from ..train.stage2 import train_stage2

    run_training(train_stage2, "stage 2", recipe_path, overrides, out, resume, force, device, strict)


@click.command("sample")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Stage-2 bundle (.safetensors).")
@click.option("--cond", default=None, help="Condition input, usually a file (e.g. depth.png).")
@click.option("--class", "class_label", type=int, default=None, help="Class label (class-conditional models).")
@click.option("--size", "size_text", default=None,
              help="Output size WIDTHxHEIGHT in pixels, e.g. 1024x576 (default with --init: the init's size).")
@click.option("--init", "init_path", default=None, type=click.Path(dir_okay=False),
              help="Image to edit: its codes are kept except under --mask and outside it on a larger --size.")
@click.option("--mask", "mask_path", default=None, type=click.Path(dir_okay=False),
              help="With --init: a PNG of the init's size, white where to resample (a code is resampled "
                   "when any pixel of its f x f cell is white).")
@click.option("--anchor", type=click.Choice(ANCHORS), default=None,
              help="With --init and a larger --size: where the init image sits (default center).")
@click.option("--n", type=int, default=1, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top-k", type=int, default=None, help="Sample among the k most likely codes.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling mass in (0, 1].")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--window-stride", type=int, default=None,
              help="Sliding-window step in codes: 1 is the reference behaviour (slowest); default half the "
                   "window (see benchmarks/README.md for speed and quality). Full-attention models only: "
                   "local-attention models sample with a rolling cache and refuse it.")
@click.option("--cfg-scale", type=float, default=1.0, show_default=True,
              help="Classifier-free guidance scale (models trained with condition.dropout, or a class model's label_dropout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-o", "--out", required=True, help="Output folder, or a .png file when --n 1.")
@click.option("--codes", "keep_codes", is_flag=True, help="Also write the sampled indices (.npy).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def sample_command(model_path: str, cond: str | None, class_label: int | None, size_text: str | None,
                   init_path: str | None, mask_path: str | None, anchor: str | None, n: int,
                   seed: int, top_k: int | None, top_p: float | None, temperature: float,
                   window_stride: int | None,
                   cfg_scale: float, batch_size: int, out: str, keep_codes: bool, device: str,
                   force: bool) -> None:
    """Draw images of any size (sliding window beyond the training window), or edit one (--init)."""
    from ..fileio import all_or_nothing, check_new
    from ..stage2 import Stage2Model
    from ..codes import save_codes
    from ..images import image_grid, save_png, to_uint8

    if init_path is None:
        for name, value in (("--mask", mask_path), ("--anchor", anchor)):
            if value is not None:
                raise VqtError(f"{name} edits an image: pass the image with --init")
        if size_text is None:
            raise VqtError("pass --size WIDTHxHEIGHT (or --init IMAGE to edit an image)")
    size = None if size_text is None else parse_size(size_text)
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
    model = Stage2Model.load(model_path, device_for(device))
    image = mask = None
    if init_path is not None:
        from ..editing import read_init, read_mask

        image = read_init(init_path, model.factor, size, channels=model.first_stage.model_config.in_channels)
        mask = None if mask_path is None else read_mask(mask_path, tuple(image.shape[-2:]))
        if mask is None and size in (None, tuple(image.shape[-2:])):
            raise VqtError(f"--init {init_path} alone leaves nothing to sample: pass --mask to inpaint, or a "
                           "larger --size to outpaint")
        size = size or tuple(image.shape[-2:])
    grid = model.check_size(*size)
    raw = None
    spec = cond if cond is not None else (None if class_label is None else str(class_label))
    if spec is not None:
        if model.condition is None:
            raise VqtError("this model is unconditional; drop --cond/--class")
        raw = model.condition.read(spec, size)
    shown = []  # a folder's grid.png: the init, its mask (white: resampled), a spatial condition, samples
    if not single:
        shown += [] if image is None else [to_uint8(image)]
        shown += [] if mask is None else [mask.numpy().astype("uint8") * 255]
        shown += [model.condition.render(raw)] if raw is not None and raw.ndim == 3 else []
    if shown:
        check_new(target / "grid.png", force)
    bar = Bar("sample", "tok")
    state = {"last": 0}

    def progress(done: int, total: int) -> None:
        if bar.bar is None:
            bar.items(total)
        bar.bar.update(done - state["last"])
        state["last"] = done

    draws = dict(cond=raw, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                 window_stride=window_stride, progress=progress, batch_size=batch_size, cfg_scale=cfg_scale)
    try:
        if image is None:
            images, codes = model.sample(n, size, **draws)
        else:
            images, codes = model.edit(image, n, mask=mask, size=size, anchor=anchor or "center", **draws)
    finally:
        bar.close()
    with all_or_nothing() as written:
        for img, p in zip(images, paths):
            written.append(save_png(to_uint8(img), p, force=force))
        if keep_codes:
            written.append(save_codes(codes.cpu().numpy(), codes_path, force=force))
        if shown:
            grid_png = image_grid([shown + [to_uint8(i) for i in images[:3]]])
            written.append(save_png(grid_png, target / "grid.png", force=force))
    click.echo(f"wrote {n} sample(s) of {size[1]}x{size[0]} ({grid[1]}x{grid[0]} codes) to {out}")

