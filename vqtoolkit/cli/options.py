"""What the commands share: progress bars, recipe options, output paths, sizes and devices."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import VqtError


class Bar:
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


def recipe_options(f: Any) -> Any:
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override a recipe value (repeatable), e.g. --set train.batch_size=8.")(f)
    f = click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder (default: runs/<recipe name>).")(f)
    f = click.option("--resume", type=click.Choice(["strict", "auto"]), default=None, metavar="[auto]",
                     help="Continue the run in the run folder. '--resume auto': continue it when the folder "
                          "holds training state, else start a new run (relaunching a preempted job).")(f)
    f = click.option("--force", is_flag=True, help="Start over, replacing a previous run's files.")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="Override train.device.")(f)
    f = click.option("--strict", is_flag=True, help="Stop at the first unreadable image (data.strict).")(f)
    return f


class TrainCommand(click.Command):
    """A train-* command, where `--resume auto` gives --resume its value and `--resume` alone means
    strict. (Click's options whose value may be left out would take a RECIPE after --resume as theirs.)"""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _resume_values(args))


def _resume_values(args: list[str]) -> list[str]:
    """`--resume auto` -> `--resume=auto`, any other `--resume` -> `--resume=strict` (up to `--`)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--":
            return out + args[i:]
        if args[i] == "--resume":
            auto = args[i + 1:i + 2] == ["auto"]
            out.append("--resume=auto" if auto else "--resume=strict")
            i += 1 + auto
        else:
            out.append(args[i])
            i += 1
    return out


def run_training(train: Any, desc: str, recipe_path: str, overrides: tuple[str, ...], out: str | None,
                 resume: str | None, force: bool, device: str | None, strict: bool) -> None:
    """Both train-* commands: load the recipe, run with a progress bar, report on rank 0."""
    from ..recipes import load_recipe
    from ..train.run_dir import STATE

    recipe = load_recipe(recipe_path, overrides + (("data.strict=true",) if strict else ()))
    folder = out or f"runs/{recipe.stem}"
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if resume == "auto" and rank0:
        state = Path(folder) / STATE
        click.echo(f"--resume auto: resuming from {state}" if state.is_file() else
                   f"--resume auto: {folder} holds no training state; starting a new run")
    bar = Bar(desc, "step")
    try:
        summary = train(recipe, folder, resume={None: False, "strict": True, "auto": "auto"}[resume],
                        force=force, device=device, progress=bar.steps)
    finally:
        bar.close()
    if rank0:
        report(summary)


def report(summary: dict[str, Any]) -> None:
    click.echo(f"finished at step {summary['step']}: model {summary['bundle']}")
    if summary.get("skipped_images"):
        names = summary["skipped_images"]
        click.echo(f"skipped {len(names)} unreadable image(s), e.g. {names[0]} (--strict stops at the first)")
    for name, reason in summary.get("loggers_off", {}).items():
        click.echo(f"logger {name} was turned off: {reason}")
    figures = {k: summary[k] for k in ("psnr", "codebook_usage", "perplexity", "bits_per_token", "gain_percent")
               if k in summary}
    if figures:
        click.echo("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


def outputs_for(inputs: list[str], out: str, suffix: str, force: bool) -> list[Path]:
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


def device_for(name: str) -> str:
    """--device NAME as a torch device string (auto: CUDA when present), or a clear error."""
    from ..train.runtime import resolve_device

    return resolve_device(name)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width), with errors that say what was expected."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise VqtError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1024x576")
    width, height = (int(p) for p in parts)
    if width < 1 or height < 1:
        raise VqtError(f"--size {text!r}: width and height must be positive")
    return height, width
