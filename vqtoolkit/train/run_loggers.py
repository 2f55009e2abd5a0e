"""The loggers of one training run: observers that receive every metrics record and sample grid.

A logger is a plugin implementing the `vqt_log_*` hooks (docs/plugin_hooks.md); the recipe's
`train.loggers` names the plugins to call, `jsonl` (metrics.jsonl) by default. Each logger gets a
`LogRun` of its own, so what it opens for a run lives with that run and is closed by `vqt_log_end`
however training ends. A logger that cannot start stops the run before it trains; one that raises
later is reported once and turned off, and training goes on without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Recipe
from ..errors import PluginError, RecipeError, VqtError, did_you_mean
from ..plugins import get_plugin_manager, skipped_note

log = logging.getLogger(__name__)


@dataclass
class LogRun:
    """What a logger's hooks receive as `run`: one per logger and training run."""

    path: Path  # the run folder (runs/<recipe>/)
    recipe: Recipe  # the resolved recipe the run trains
    start_step: int  # 0 for a new run; the checkpoint's step when it resumed
    state: dict[str, Any] = field(default_factory=dict)  # the logger's own objects for this run (a writer)


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, VqtError) else f"{type(e).__name__}: {e}"


class RunLoggers:
    """The loggers `train.loggers` names: checked when created, started, told, ended."""

    def __init__(self, names: tuple[str, ...], where: str) -> None:
        """Check the names against the plugins that implement logging hooks (a RecipeError otherwise)."""
        known = get_plugin_manager().loggers()
        for name in names:
            if name not in known:
                raise RecipeError(f"{where}: train.loggers names '{name}', which is no logger"
                                  f"{did_you_mean(name, known)}{skipped_note()} (choose from "
                                  f"{', '.join(sorted(known)) or 'none'}; see 'vqt plugins')")
        self.names = names
        self.runs: dict[str, LogRun] = {}  # the started loggers still on
        self.off: dict[str, str] = {}  # logger -> why it was turned off

    def _hook(self, name: str, hook: str) -> Any:
        return get_plugin_manager().implementation(name, hook)

    def start(self, path: Path, recipe: Recipe, start_step: int) -> None:
        """Start every logger; when one cannot, end those started and raise a PluginError."""
        for name in self.names:
            run = LogRun(path, recipe, start_step)
            start = self._hook(name, "vqt_log_start")
            try:
                if start is not None:
                    start(run=run)
            except Exception as e:  # a logger that cannot work must not let the run train unobserved
                self.end()
                raise PluginError(f"logger '{name}' could not start: {_reason(e)}") from None
            self.runs[name] = run

    def _call(self, hook: str, **kwargs: Any) -> None:
        for name, run in list(self.runs.items()):
            call = self._hook(name, hook)
            if call is None:
                continue
            try:
                call(run=run, **kwargs)
            except Exception as e:  # a broken logger must not stop training
                self.off[name] = f"{hook} failed at step {kwargs['step']}: {_reason(e)}"
                log.warning("logger %s was turned off: %s", name, self.off[name])
                self._end(name)

    def metrics(self, step: int, record: dict[str, float]) -> None:
        self._call("vqt_log_metrics", step=step, record=record)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self._call("vqt_log_image", step=step, name=name, image=image)

    def _end(self, name: str) -> None:
        run = self.runs.pop(name)
        end = self._hook(name, "vqt_log_end")
        try:
            if end is not None:
                end(run=run)
        except Exception as e:  # reported, and the other loggers still end
            self.off.setdefault(name, f"vqt_log_end failed: {_reason(e)}")
            log.warning("logger %s: vqt_log_end failed: %s", name, _reason(e))

    def end(self) -> None:
        """End every started logger (once; later calls do nothing)."""
        for name in list(self.runs):
            self._end(name)
