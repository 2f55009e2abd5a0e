"""Where a training run executes: device, precision, the process group, and the rules that follow from them.

Both stages and the CLI ask the same questions before any model exists (which device does "auto" mean,
may this CPU run bf16, how large is the world), so the answers live here, apart from the loop.
"""

from __future__ import annotations

import contextlib
import math
import ctypes
import os
import platform
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import VqtError
from ..recipes import TrainConfig


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


def resolve_device(name: str) -> str:
    """The device a --device or train.device value names: "auto" is "cuda" when a CUDA device is
    available, else "cpu"; "cuda" without one is an error that says what to pass instead."""
    if name == "cuda" and not torch.cuda.is_available():
        raise VqtError("--device cuda, but no CUDA device is available; use --device cpu or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_runtime(cfg: TrainConfig, device: str | None = None) -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    if device is None and cfg.device == "cuda" and not torch.cuda.is_available():  # name the recipe key
        raise VqtError("train.device = 'cuda' but no CUDA device is available; use --device cpu")
    use_cuda = resolve_device(device or cfg.device) == "cuda"
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


def lr_factor(step: int, max_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """The learning rate at `step` (0-based) as a fraction of the peak: a linear warm-up over
    `warmup_steps`, then constant or a cosine down to 0 at `max_steps`. Both stages use it."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def no_sync(module: nn.Module, defer: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() on accumulation micro-steps (gradients reduced once, on the last); else a no-op."""
    return module.no_sync() if defer else contextlib.nullcontext()
