"""The loop both training stages run: start a run, step, log, write grids, checkpoint, stop cleanly.

Training runs in one process or under `torchrun` (torch.distributed with DDP). Everything that must
survive an interruption (step, data position, RNG states, optimizers, EMA) lives in a training state
written atomically beside the model bundle, so `--resume` continues exactly where the last
checkpoint left off, on any world size for the data order's global position. A stage describes its
model and step as a `Job`; this module owns the order of events around it. The pieces it leans on
live beside it: runtime.py (devices, processes), order.py (data order), state.py (what resume
restores), run_dir.py (the run's files).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..distributed import max_over_ranks, mean_over_ranks
from ..errors import CheckpointError, PluginError, VqtError
from ..recipes import Recipe, TrainConfig, recipe_to_dict
from .order import batch_stream
from .run_dir import Resume, RunDir
from .run_loggers import RunLoggers
from .runtime import Runtime, setup_runtime
from .state import _match_parameter_layouts, restore_rng, rng_state, same_architecture, seed_everything

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]  # (step, max_steps, latest logs)


class TrainingStopped(VqtError):
    """Training ended early on purpose (signal or non-finite loss); the last checkpoint is intact."""


def start_run(recipe: Recipe, out: str | Path, *, resume: Resume, force: bool, device: str | None,
              architecture: tuple[str, ...]) -> tuple[Runtime, RunDir, dict[str, Any] | None]:
    """What every run does before building its model: check the names in train.loggers, pick the
    device and join the process group, check the run folder against --resume/--force, refuse a resume
    whose recipe changed any of `architecture` (see `same_architecture`), and seed this rank. Returns
    (runtime, run folder, the training state to resume from or None)."""
    loggers = RunLoggers(recipe.train.loggers, recipe.path or "recipe")
    rt = setup_runtime(recipe.train, device)
    run = RunDir(out, loggers)
    state = run.prepare(recipe, resume, force, rt)
    if state is not None:
        same_architecture(state, recipe, run, architecture)
    seed_everything(recipe.train.seed + rt.rank)
    return rt, run, state


# ---- weights EMA ------------------------------------------------------------------------------

class ModelEMA:
    """Exponential moving average of a module's parameters and buffers (for sampling and eval).

    It sits with the loop, not in state.py: the loop updates it after every good step and saves it in
    the training state; a stage only creates it and hands it over in its `Job`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_t, t in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.detach(), 1.0 - self.decay)
            else:
                ema_t.copy_(t)


# ---- signals and bad losses -------------------------------------------------------------------

class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then checkpoints and exits)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, rt: Runtime) -> bool:
        """True on every rank when any rank got a signal (so all of them checkpoint together)."""
        flag = torch.tensor([1.0 if self.received else 0.0])
        if rt.distributed:
            flag = max_over_ranks(flag.to(rt.device))
        return bool(flag.item())


class NonFiniteLoss(Exception):
    """Raised by a stage's step when its loss is NaN or Inf on any rank (before any update)."""


def check_finite(loss: torch.Tensor, rt: Runtime) -> None:
    """Raise NonFiniteLoss when the loss is not finite on any rank (all ranks raise together)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if rt.distributed:
        bad = max_over_ranks(bad)
    if bad.item():
        raise NonFiniteLoss


# ---- the loop both stages run -----------------------------------------------------------------

@dataclass
class Job:
    """What a stage gives the shared loop.

    step(step, next_batch) runs one optimizer step (all accumulation micro-batches, via next_batch())
    and returns its logs, the same keys on every rank (they are averaged across ranks when written);
    it raises NonFiniteLoss (via check_finite) before updating anything.
    modules/optimizers/schedulers are saved in the training state by name; export(path) writes the
    model bundle; samples(step) writes the grids people look at; summary() the final held-out figures.
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: Callable[[int, Callable[[], dict[str, Any]]], dict[str, float]]
    export: Callable[[Path], None]
    samples: Callable[[int], None]
    summary: Callable[[], dict[str, Any]]
    schedulers: dict[str, Any] | None = None
    ema: ModelEMA | None = None
    ema_of: nn.Module | None = None
    lr: float = 0.0


def fit(job: Job, recipe: Recipe, rt: Runtime, run: RunDir, state: dict[str, Any] | None,
        dataset: Dataset, progress: Progress | None) -> dict[str, Any]:
    """Run (or resume) training to train.max_steps with logging, grids, checkpoints and signals."""
    cfg = recipe.train
    step, batches_done = 0, 0
    if state is not None:
        step, batches_done = _restore(job, state, rt, cfg)
    stream = batch_stream(dataset, cfg.batch_size, rt, cfg.seed, recipe.data.num_workers, batches_done)

    skipped: set[str] = set()  # unreadable images met so far (this rank's share under DDP)

    def next_batch() -> dict[str, Any]:
        nonlocal batches_done
        batches_done += 1
        batch = next(stream)
        for lines in batch.get("skipped", ()):
            skipped.update(filter(None, lines.split("\n")))
        return batch

    last_saved = step
    window: list[dict[str, float]] = []
    started = time.perf_counter()

    def checkpoint() -> None:
        nonlocal last_saved
        _checkpoint(job, run, rt, recipe, step, batches_done)
        last_saved = step

    with StopSignals() as signals, _loggers_running(run, recipe, rt, step):
        while step < cfg.max_steps:
            try:
                logs, ok = job.step(step, next_batch), True
            except NonFiniteLoss:
                if cfg.on_nan == "stop":
                    raise TrainingStopped(
                        f"the loss became non-finite at step {step}; stopped without saving, so the last "
                        f"good checkpoint (step {last_saved}) is intact. Lower train.base_learning_rate, "
                        "or set train.on_nan = 'skip' to skip such steps") from None
                logs, ok = {}, False
                log.warning("non-finite loss at step %d; step skipped", step)
            if ok and job.ema is not None:
                job.ema.update(job.ema_of)
            step += 1
            if logs:
                window.append(logs)
            if progress is not None and rt.is_main:
                progress(step, cfg.max_steps, logs)
            if window and (step % cfg.log_every == 0 or step == cfg.max_steps):
                record = _window_means(window, rt)
                if rt.is_main:
                    run.log_metrics(step, {"lr": job.lr, "time": round(time.perf_counter() - started, 3), **record})
                window.clear()
            if rt.is_main and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                job.samples(step)
                if step < cfg.max_steps:  # the last step's figures are the summary's, below
                    _log_held_out(job, run, step)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                checkpoint()
            if signals.should_stop(rt):
                if last_saved != step:
                    checkpoint()
                raise TrainingStopped(f"stopped by {signals.received or 'a signal on another rank'} at "
                                      f"step {step}; checkpoint saved in {run.path}; continue with --resume")
        summary: dict[str, Any] = {"step": step, "run": str(run.path), "bundle": str(run.bundle),
                                   "skipped_images": sorted(skipped)}
        if rt.is_main:
            summary.update(_log_held_out(job, run, step))
    summary["loggers_off"] = dict(run.loggers.off)
    return summary


@contextlib.contextmanager
def _loggers_running(run: RunDir, recipe: Recipe, rt: Runtime, step: int) -> Iterator[None]:
    """The loggers started on rank 0 (when one cannot start, every rank stops with its error) and
    ended however training ends: finished, stopped by a signal, or failed."""
    error = ""
    if rt.is_main:
        try:
            run.loggers.start(run.path, recipe, step)
        except PluginError as e:
            error = str(e)
    failed = torch.tensor([1.0 if error else 0.0])
    if rt.distributed:
        failed = max_over_ranks(failed.to(rt.device))
    if failed.item():
        raise PluginError(error or "a logger could not start on rank 0 (its error is in rank 0's output)")
    try:
        yield
    finally:
        run.loggers.end()


def _log_held_out(job: Job, run: RunDir, step: int) -> dict[str, Any]:
    """The held-out figures now, logged as val_* beside the training curves, and the curves redrawn."""
    figures = job.summary()
    if figures:
        run.log_metrics(step, {f"val_{k}": v for k, v in figures.items()})
    run.write_curves()
    return figures


def _window_means(window: list[dict[str, float]], rt: Runtime) -> dict[str, float]:
    """Each logged figure's mean over the window and, under DDP, over the ranks: the global batch's."""
    keys = sorted({k for w in window for k in w})
    means = torch.tensor([np.mean([w[k] for w in window if k in w]) for k in keys], dtype=torch.float64)
    if rt.distributed:  # every rank logs the same steps with the same keys
        means = mean_over_ranks(means.to(rt.device)).cpu()
    return dict(zip(keys, means.tolist()))


def _restore(job: Job, state: dict[str, Any], rt: Runtime, cfg: TrainConfig) -> tuple[int, int]:
    try:
        for name, module in job.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in job.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            _match_parameter_layouts(opt)
        for name, sched in (job.schedulers or {}).items():
            sched.load_state_dict(state["schedulers"][name])
        if job.ema is not None and "ema" in state:
            job.ema.shadow.load_state_dict(state["ema"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"--resume: the saved training state does not fit this recipe's model "
                              f"({type(e).__name__}: {str(e)[:300]}); resume with the run's own recipe "
                              "or start a new --out") from None
    step = int(state["step"])
    rngs = state["rng"]
    if len(rngs) == rt.world_size:
        restore_rng(rngs[rt.rank])
    else:  # another world size: the same global data order, fresh per-rank randomness
        seed_everything(cfg.seed + rt.rank + 1_000_003 * step)
    # The data position is global (samples seen by all ranks), so it survives a new world size.
    return step, int(state["samples_done"]) // (cfg.batch_size * rt.world_size)


def _checkpoint(job: Job, run: RunDir, rt: Runtime, recipe: Recipe, step: int, batches_done: int) -> None:
    """Bundle first, then the training state: a crash between the two only repeats some steps."""
    rngs: list[Any] = [rng_state()]
    if rt.distributed:
        rngs = [None] * rt.world_size
        dist.all_gather_object(rngs, rng_state())
    if rt.is_main:
        job.export(run.bundle)
        samples_done = batches_done * recipe.train.batch_size * rt.world_size
        state = {"step": step, "samples_done": samples_done, "recipe": recipe_to_dict(recipe), "rng": rngs,
                 "modules": {n: m.state_dict() for n, m in job.modules.items()},
                 "optimizers": {n: o.state_dict() for n, o in job.optimizers.items()},
                 "schedulers": {n: s.state_dict() for n, s in (job.schedulers or {}).items()}}
        if job.ema is not None:
            state["ema"] = job.ema.shadow.state_dict()
        run.save_state(state)
    rt.barrier()
