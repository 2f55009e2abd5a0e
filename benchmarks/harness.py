"""What the benchmark scripts share: each figure in its own process, so its peak memory is its own."""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from typing import Any

import torch


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
