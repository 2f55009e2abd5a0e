"""Sampling speed: raster with vs without KV cache, sliding window stride 1 (taming) vs strides 2..16.

Prints one JSON object. Model: 8 layers, 512 wide, 8 heads, vocab 1024, block 512, random weights,
2 CPU threads. The sliding figures are for a 1024x576 image at f16 (grid 36x64, window 16x16,
256 condition tokens per window, as a depth condition gives). A full stride-1 run takes 7-10
minutes, so by default only `--tokens` tokens are timed and the total is extrapolated per token.

The timed tokens start at row 8, the first row whose window sits in the steady state
(local row 8 of 16; 21 of the 36 rows look like it, the others are cheaper or dearer about
symmetrically), because the first rows see far shorter contexts and would flatter every method.
The rows before it are skipped with a stand-in model that returns uniform logits at no cost.

    python benchmarks/sampling.py [--tokens N] [--threads T]

A sample-quality figure needs a trained stage-2 bundle and is left out for now.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from vqtoolkit.models.transformer import GPT, KVCache
from vqtoolkit.sampling import sample_raster, sample_sliding, sample_sliding_reference

GRID, WINDOW, PREFIX = (36, 64), (16, 16), 256
STRIDES = (2, 4, 8, 16)


class _Stop(Exception):
    """Raised from the progress callback once the timed tokens are done."""


class _SkipThenRun(torch.nn.Module):
    """Wraps the GPT: uniform logits for free until `start` tokens are sampled, then the real model."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.block_size = gpt.block_size
        self.skipping = True

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return self.gpt.new_cache(batch_size, max_len)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if not self.skipping:
            return self.gpt(idx, cache)
        if cache is not None:
            cache.length += idx.shape[1]
        return torch.zeros(*idx.shape, self.gpt.vocab_size)  # (B, T, V)


def time_sliding(run: Callable[..., torch.Tensor], gpt: GPT, start: int, n_tokens: int, **kwargs) -> float:
    """Seconds per token for tokens start+1 .. start+n_tokens of a sliding-window run."""
    model = _SkipThenRun(gpt) if start else gpt
    clock = {"t0": time.perf_counter()}

    def progress(done: int, total: int) -> None:
        if done == start:
            model.skipping = False
            clock["t0"] = time.perf_counter()
        if done == start + n_tokens:
            clock["t1"] = time.perf_counter()
            raise _Stop

    cond = torch.randint(1024, GRID, generator=torch.Generator().manual_seed(1))  # (H, W) condition codes

    def prefix_for_window(top: int, left: int) -> torch.Tensor:
        return cond[top : top + WINDOW[0], left : left + WINDOW[1]].reshape(1, PREFIX)  # (1, 256)

    try:
        run(model, prefix_for_window, GRID, WINDOW, generator=torch.Generator().manual_seed(0), progress=progress,
            **kwargs)
    except _Stop:
        pass
    return (clock["t1"] - clock["t0"]) / n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128,
                        help="sliding-window tokens timed per method (default two rows; >= 2304 times full runs)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the script owns its process: the same random weights on every run
    gpt = GPT(vocab_size=1024, block_size=512, n_layer=8, n_head=8, n_embd=512).eval()
    gpt(torch.zeros(1, 300, dtype=torch.long))  # warm-up

    raster = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        t0 = time.perf_counter()
        sample_raster(gpt, torch.zeros(1, 1, dtype=torch.long), 256, generator=torch.Generator().manual_seed(0),
                      use_cache=use_cache)
        raster[f"{name}_tokens_per_s"] = round(256 / (time.perf_counter() - t0), 1)
    raster["speedup"] = round(raster["cached_tokens_per_s"] / raster["uncached_tokens_per_s"], 2)

    total = GRID[0] * GRID[1]
    full = args.tokens >= total
    start, n = (0, total) if full else (WINDOW[0] // 2 * GRID[1], args.tokens)
    seconds = {"stride_1_reference": time_sliding(sample_sliding_reference, gpt, start, n) * total}
    for stride in STRIDES:
        seconds[f"stride_{stride}"] = time_sliding(sample_sliding, gpt, start, n, stride=stride) * total
    reference = seconds["stride_1_reference"]
    sliding = {
        "image": "1024x576 at f16",
        "grid": list(GRID),
        "window": list(WINDOW),
        "prefix_tokens": PREFIX,
        "timed_tokens": n,
        "extrapolated": not full,
        "method": "full runs" if full else
        f"tokens {start + 1}..{start + n} (from row {start // GRID[1]}, the steady-state window row) timed, "
        f"seconds per token x {total} tokens",
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "speedup_vs_reference": {k: round(reference / v, 2) for k, v in seconds.items()},
    }
    config = {"n_layer": 8, "n_embd": 512, "n_head": 8, "vocab_size": 1024, "block_size": 512,
              "threads": args.threads, "torch": torch.__version__}
    print(json.dumps({"model": config, "raster_256_tokens": raster, "sliding_window": sliding}, indent=2))


if __name__ == "__main__":
    main()
