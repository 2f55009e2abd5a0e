"""What the benchmark scripts share: each figure in its own process, so its peak memory is its own."""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from typing import Any

import torch

# The paper's f16 VQGAN (ch_mult 1,1,2,2,4, 2 res blocks, attention at 16, z 256) less its width `ch`.
F16_ARCH = dict(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256, resolution=256)


def peak_rss_mb() -> float:
    """This process's maximum resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_child(queue: Any, threads: int, fn: Callable[..., dict], args: tuple) -> None:
    torch.set_num_threads(threads)
    result = fn(*args)
    queue.put({**result, "peak_rss_mb": round(peak_rss_mb(), 1)})


def isolated(threads: int, fn: Callable[..., dict], *args: Any) -> dict:
    """`fn(*args)` in a fresh spawned process with `threads` torch threads; its dict plus peak_rss_mb."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(queue, threads, fn, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result
