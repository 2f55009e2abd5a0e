"""The run folder: the one place a run's files are named, and the rules for --resume and --force.

Stages, the loop and the CLI all point at the same files (the bundle, the training state, the metrics
log, the sample grids, the resolved recipe); naming them in one class keeps those paths in step. The
run's loggers (run_loggers.py) receive what is logged and every grid written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..checkpoint import load_train_state, save_train_state
from ..errors import VqtError
from ..fileio import atomic_write_text
from ..images import save_png
from ..plots import plot_curves, read_metrics
from ..recipes import Recipe, recipe_to_toml
from .run_loggers import RunLoggers
from .runtime import Runtime

Resume = bool | Literal["auto"]  # --resume: False (a new run), True (strict), "auto" (when there is state)
STATE = "state.safetensors"  # what --resume continues from
METRICS = "metrics.jsonl"  # what the built-in `jsonl` logger writes, and curves.png and --resume read


def append_metrics(folder: Path, step: int, record: dict[str, float]) -> None:
    """One line of the run folder's metrics.jsonl: {"step": step, **record}."""
    with open(folder / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **record}) + "\n")


class RunDir:
    """runs/<recipe>/: last.safetensors, state.safetensors, metrics.jsonl, curves.png, samples/, recipe.toml."""

    def __init__(self, path: str | Path, loggers: RunLoggers) -> None:
        self.path = Path(path)
        self.loggers = loggers
        self.bundle = self.path / "last.safetensors"
        self.state = self.path / STATE
        self.metrics = self.path / METRICS
        self.samples = self.path / "samples"
        self.recipe = self.path / "recipe.toml"
        self.curves = self.path / "curves.png"

    def prepare(self, recipe: Recipe, resume: Resume, force: bool, rt: Runtime) -> dict[str, Any] | None:
        """Check the folder against --resume/--force; return the state to resume from, if any.

        resume="auto" resumes when the folder holds training state and otherwise starts a new run (a
        preempted job relaunched with the same command): what a run killed before its first complete
        checkpoint left (metrics, grids, a bundle without its state) is replaced."""
        if resume == "auto":
            resume = self.state.is_file()
            force = force or not resume
        if resume:
            if not self.state.is_file():
                raise VqtError(f"--resume: {self.path} holds no training state ({self.state.name}); "
                               "start without --resume")
            state = load_train_state(self.state)
            if rt.is_main:
                self._trim_metrics(int(state["step"]))
                for stale in self.path.glob(".*.tmp"):  # writes cut short by a kill
                    stale.unlink(missing_ok=True)
            return state
        if (self.state.exists() or self.bundle.exists()) and not force:
            raise VqtError(f"{self.path} already holds a run; pass --resume to continue it, "
                           "--force to start over, or --out for another folder")
        if rt.is_main:  # also what a run killed before its first checkpoint left behind
            for p in (self.state, self.bundle, self.metrics, *self.path.glob(".*.tmp")):
                p.unlink(missing_ok=True)
        rt.barrier()
        if rt.is_main:
            self.samples.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.recipe, recipe_to_toml(recipe), force=True)
        return None

    def _trim_metrics(self, step: int) -> None:
        """Drop metrics logged after the checkpoint we resume from; they will be logged again."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept), force=True)

    def log_metrics(self, step: int, record: dict[str, float]) -> None:
        """Hand a record of figures at `step` to the loggers (the `jsonl` logger appends it to metrics.jsonl)."""
        self.loggers.metrics(step, record)

    def save_grid(self, name: str, step: int, grid: np.ndarray) -> None:
        """samples/<name>_<step>.png (name: "samples", "reconstructions"), also handed to the loggers."""
        save_png(grid, self.samples / f"{name}_{step:07d}.png", force=True)
        self.loggers.image(step, name, grid)

    def write_curves(self) -> None:
        """curves.png: one panel per figure in metrics.jsonl (losses, PSNR, usage, bits, gain, ...)."""
        image = plot_curves(read_metrics(self.metrics)) if self.metrics.is_file() else None
        if image is not None:
            save_png(image, self.curves, force=True)

    def save_state(self, state: dict[str, Any]) -> None:
        save_train_state(self.state, state)
