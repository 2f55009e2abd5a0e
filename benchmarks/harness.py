"""What the benchmark scripts share: each figure in its own process, so its peak memory is its own."""

from __future__ import annotations

import multiprocessing as mp
import queue as queues
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

# The paper's f16 VQGAN (ch_mult 1,1,2,2,4, 2 res blocks, attention at 16, z 256) less its width `ch`.
F16_ARCH = dict(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256, resolution=256)


def peak_rss_mb() -> float:
    """This process's maximum resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_child(queue: Any, index: int, threads: int, fn: Callable[..., dict], args: tuple) -> None:
    torch.set_num_threads(threads)
    try:
        result = {**fn(*args), "peak_rss_mb": round(peak_rss_mb(), 1)}
    except BaseException as exc:  # reported to the parent, which decides whether it is fatal
        lines = traceback.format_exception_only(type(exc), exc)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result = {"error": "".join(lines).strip() + f" (at {where.filename}:{where.lineno})"}
    queue.put((index, result))


def guarded_many(threads: int, timeout: float | None, fn: Callable[..., dict], calls: list[tuple]) -> list[dict]:
    """`fn(*args)` for each args of `calls`, all at once, each in a fresh spawned process with `threads`
    torch threads: a dict per call, its own plus peak_rss_mb, or {"error": ...} when it raised, died,
    or gave no result within `timeout` seconds (all still running then are killed). Never raises, so
    one failing figure does not stop the others."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_in_child, args=(queue, i, threads, fn, args)) for i, args in enumerate(calls)]
    for proc in procs:
        proc.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    results: dict[int, dict] = {}
    late = False
    try:
        while len(results) < len(procs):
            try:
                index, result = queue.get(timeout=1.0)
                results[index] = result
                continue
            except queues.Empty:
                pass
            if not any(proc.is_alive() for proc in procs):  # all gone; a last result may still be in transit
                try:
                    index, result = queue.get(timeout=1.0)
                    results[index] = result
                    continue
                except queues.Empty:
                    break
            if deadline is not None and time.monotonic() > deadline:
                late = True
                break
    finally:
        for proc in procs:
            proc.join(5 if len(results) == len(procs) else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join()
    missing = f"no result within {timeout or 0:.0f} s; stopped" if late else "the process died without a result"
    return [results.get(i) or {"error": f"{missing} (exit code {proc.exitcode})"} for i, proc in enumerate(procs)]


def guarded(threads: int, timeout: float | None, fn: Callable[..., dict], *args: Any) -> dict:
    """`guarded_many` for one call."""
    return guarded_many(threads, timeout, fn, [args])[0]


def isolated(threads: int, fn: Callable[..., dict], *args: Any) -> dict:
    """`fn(*args)` in a fresh spawned process with `threads` torch threads; its dict plus peak_rss_mb.
    Raises RuntimeError when it fails: a benchmark table must not have holes."""
    result = guarded(threads, None, fn, *args)
    if "error" in result:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}{args}: {result['error']}")
    return result
