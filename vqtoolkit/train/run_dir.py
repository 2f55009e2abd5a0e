"""The run folder: the one place a run's files are named, and the rules for --resume and --force.

Stages, the loop and the CLI all point at the same files (the bundle, the training state, the metrics
log, the sample grids, the resolved recipe); naming them in one class keeps those paths in step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import load_train_state, save_train_state
from ..errors import VqtError
from ..fileio import atomic_write_text
from ..images import save_png
from ..plots import plot_curves, read_metrics
from ..recipes import Recipe, recipe_to_toml
from .runtime import Runtime


class RunDir:
    """runs/<recipe>/: last.safetensors, state.safetensors, metrics.jsonl, curves.png, samples/, recipe.toml."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.bundle = self.path / "last.safetensors"
        self.state = self.path / "state.safetensors"
        self.metrics = self.path / "metrics.jsonl"
        self.samples = self.path / "samples"
        self.recipe = self.path / "recipe.toml"
        self.curves = self.path / "curves.png"

    def prepare(self, recipe: Recipe, resume: bool, force: bool, rt: Runtime) -> dict[str, Any] | None:
        """Check the folder against --resume/--force; return the state to resume from, if any."""
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

    def log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_curves(self) -> None:
        """curves.png: one panel per figure in metrics.jsonl (losses, PSNR, usage, bits, gain, ...)."""
        image = plot_curves(read_metrics(self.metrics)) if self.metrics.is_file() else None
        if image is not None:
            save_png(image, self.curves, force=True)

    def save_state(self, state: dict[str, Any]) -> None:
        save_train_state(self.state, state)
