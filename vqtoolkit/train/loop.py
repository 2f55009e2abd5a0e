"""Machinery both training stages share: devices and DDP, data order, run folders, checkpoints.

Training runs in one process or under `torchrun` (torch.distributed with DDP). Everything that must
survive an interruption (step, data position, RNG states, optimizers, EMA) lives in a training state
written atomically beside the model bundle, so `--resume` continues exactly where the last
checkpoint left off, on any world size for the data order's global position.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import logging
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..checkpoint import load_train_state, save_train_state
from ..fileio import atomic_write_text
from ..errors import CheckpointError, DataError, VqtError
from ..recipes import Recipe, TrainConfig, recipe_to_dict, recipe_to_toml

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]  # (step, max_steps, latest logs)


class TrainingStopped(VqtError):
    """Training ended early on purpose (signal or non-finite loss); the last checkpoint is intact."""


# ---- devices, precision, processes ------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None  # bf16 autocast; None: full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(cfg: TrainConfig, device: str | None = None) -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    want = device or cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise VqtError("train.device = 'cuda' but no CUDA device is available; use --device cpu")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        keep_freed_memory()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    if cfg.precision == "bf16" and not use_cuda and not cpu_has_bf16():
        raise VqtError("train.precision = 'bf16' on CPU needs native bf16 arithmetic (AVX512-BF16 or AMX), "
                       "which this CPU lacks; use 'auto' or 'fp32'")
    amp = torch.bfloat16 if cfg.precision == "bf16" or (use_cuda and cfg.precision == "auto") else None
    return Runtime(dev, rank, world, amp)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h parameter numbers


def keep_freed_memory() -> None:
    """On Linux, let glibc keep freed heap memory for reuse instead of handing it back to the OS.

    Each CPU training step frees and then reallocates the same activation buffers. glibc's defaults
    trim free memory off the heap, so every step page-faults its activations back in (zeroed by the
    kernel): 3-5 % of a stage-1 step on 2 cores (benchmarks/README.md). Blocks up to 32 MB stay on the
    heap, and each process keeps up to 1 GB of free heap. Process-wide; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent from some C libraries
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX); elsewhere bf16 is emulated, and
    slower than fp32."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def scaled_lr(cfg: TrainConfig, world_size: int) -> float:
    """The reference code's rule: lr = base_lr × batch size × accumulation × number of processes."""
    return cfg.base_learning_rate * cfg.batch_size * cfg.accumulate * world_size


def no_sync(module: nn.Module, defer: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() on accumulation micro-steps (gradients reduced once, on the last); else a no-op."""
    return module.no_sync() if defer else contextlib.nullcontext()


# ---- data order that survives a restart -------------------------------------------------------

class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices (as DistributedSampler) that can start mid-epoch.

    Epoch e is a permutation seeded by (seed, e); rank r takes every world-th index. The tail that
    does not fill a global batch is dropped so every rank sees the same number of equal batches.
    """

    def __init__(self, n: int, batch_size: int, rt: Runtime, seed: int, shuffle: bool = True) -> None:
        per_rank = n // rt.world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"the dataset has {n} items, fewer than one batch "
                            f"({batch_size} per process × {rt.world_size} processes)")
        self.n, self.batch_size, self.rt, self.seed, self.shuffle = n, batch_size, rt, seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, batches_done: int) -> None:
        self.epoch, self.start_batch = divmod(batches_done, self.batches_per_epoch)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rt.rank::self.rt.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size:])


def batch_stream(dataset: Dataset, batch_size: int, rt: Runtime, seed: int, num_workers: int,
                 batches_done: int) -> Iterator[dict[str, Any]]:
    """Endless batches, starting after `batches_done` batches of this run's data order."""
    sampler = ResumableSampler(len(dataset), batch_size, rt, seed)
    sampler.set_position(batches_done)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(sampler.epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            drop_last=True, pin_memory=rt.device.type == "cuda",
                            persistent_workers=False)
        yield from loader
        sampler.set_position((sampler.epoch + 1) * sampler.batches_per_epoch)


# ---- random state -----------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, torch.tensor(py_words, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- weights EMA ------------------------------------------------------------------------------

class ModelEMA:
    """Exponential moving average of a module's parameters and buffers (for sampling and eval)."""

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


# ---- the run folder ---------------------------------------------------------------------------

class RunDir:
    """runs/<recipe>/: last.safetensors, state.safetensors, metrics.jsonl, samples/, recipe.toml."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.bundle = self.path / "last.safetensors"
        self.state = self.path / "state.safetensors"
        self.metrics = self.path / "metrics.jsonl"
        self.samples = self.path / "samples"
        self.recipe = self.path / "recipe.toml"

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

    def save_state(self, state: dict[str, Any]) -> None:
        save_train_state(self.state, state)


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
            flag = flag.to(rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


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

    with StopSignals() as signals:
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
                    run.log_metrics({"step": step, "lr": job.lr, "time": round(time.perf_counter() - started, 3),
                                     **record})
                window.clear()
            if rt.is_main and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                job.samples(step)
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
        figures = job.summary()
        if figures:
            run.log_metrics({"step": step, **{f"val_{k}": v for k, v in figures.items()}})
        summary.update(figures)
    return summary


class NonFiniteLoss(Exception):
    """Raised by a stage's step when its loss is NaN or Inf on any rank (before any update)."""


def _window_means(window: list[dict[str, float]], rt: Runtime) -> dict[str, float]:
    """Each logged figure's mean over the window and, under DDP, over the ranks: the global batch's."""
    keys = sorted({k for w in window for k in w})
    means = torch.tensor([np.mean([w[k] for w in window if k in w]) for k in keys], dtype=torch.float64)
    if rt.distributed:  # every rank logs the same steps with the same keys
        means = means.to(rt.device)
        dist.all_reduce(means)
        means = means.cpu() / rt.world_size
    return dict(zip(keys, means.tolist()))


def check_finite(loss: torch.Tensor, rt: Runtime) -> None:
    """Raise NonFiniteLoss when the loss is not finite on any rank (all ranks raise together)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if rt.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise NonFiniteLoss


def _match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Lay restored optimizer state out like its parameter. The state file holds contiguous tensors;
    fused Adam walks a channels_last parameter and a contiguous moment buffer as flat memory, which
    would pair the wrong elements without any error."""
    for param, state in opt.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


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


def same_architecture(state: dict[str, Any], recipe: Recipe, run: RunDir, sections: tuple[str, ...]) -> None:
    """Refuse to resume a run with a recipe whose model sections changed."""
    now = recipe_to_dict(recipe)
    for section in sections:
        if state["recipe"].get(section) != now[section]:
            raise VqtError(f"--resume: the recipe's [{section}] differs from the run in {run.path} "
                           f"(see {run.recipe}); resume with the same recipe or start a new --out")
