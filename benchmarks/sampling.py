"""Sampling speed and memory: raster with vs without KV cache; a 1024x576 sliding-window image by stride.

Prints one JSON object. Model: 8 layers, 512 wide, 8 heads, vocab 1024, block 512, random weights,
2 CPU threads. "Uncached" and "reference" figures run taming's computation: one full forward per
token, with minGPT's attention (explicit scores and mask) in place of SDPA. Raster figures: each
process times three 256-token runs and keeps the median; cached and uncached processes alternate,
`--rounds` times each, and the best of each kind counts. The sliding figures are whole 1024x576 images at f16 (grid 36x64,
window 16x16, 256 condition tokens per window, as a depth condition gives): the reference (taming's
scripts/sample_conditional.py: per token one forward over the condition and the whole window, 511
tokens, see `taming_reference`) and vqtoolkit's `sample_sliding` at strides 1..16. Every run
is timed in full, because the cost per token differs between the first, middle and last rows, and
between the edges and the middle of a row. The reference takes about 18 minutes on a 2-core CPU;
`--quick` times a 384x256 image (grid 16x24, a single window row) instead.

Each figure runs in its own process; peak_rss_mb is that process's maximum RSS (model included).

    python benchmarks/sampling.py [--quick] [--rounds 2] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from harness import isolated
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.sampling import sample_logits, sample_raster, sample_sliding, window_start

WINDOW, PREFIX = (16, 16), 256
STRIDES = (1, 2, 4, 8, 16)


def _as_reference() -> None:
    """Give this (reference-only) process taming's minGPT attention: explicit scores, a mask buffer,
    softmax, and the stacked (k, v) `present` it returns for every call; vqtoolkit uses SDPA."""
    from vqtoolkit.models import transformer

    masks: dict[int, torch.Tensor] = {}

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        hs = C // self.n_head
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)
        torch.stack((k, v))  # taming's `present`
        mask = masks.setdefault(T, torch.tril(torch.ones(T, T)).view(1, 1, T, T))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))

    transformer.CausalSelfAttention.forward = forward


def _gpt() -> GPT:
    torch.manual_seed(0)  # the same random weights in every process
    gpt = GPT(GPTConfig(vocab_size=1024, block_size=512, n_layer=8, n_head=8, n_embd=512)).eval()
    with torch.inference_mode():
        gpt(torch.zeros(1, 300, dtype=torch.long))  # warm-up
    return gpt


def raster(use_cache: bool) -> dict:
    if not use_cache:
        _as_reference()
    gpt = _gpt()
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        sample_raster(gpt, torch.zeros(1, 1, dtype=torch.long), 256, generator=torch.Generator().manual_seed(0),
                      use_cache=use_cache)
        seconds.append(time.perf_counter() - start)
    return {"tokens_per_s": round(256 / sorted(seconds)[1], 1)}


def taming_reference(gpt: GPT, prefix_for_window, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Taming's scripts/sample_conditional.py, step for step: for every token, the condition and the
    whole window (its codes after the target included, which causal attention ignores) in one
    forward over all but the last token, and the logits read at the target's place in the window.
    (`sample_sliding_reference` draws the same tokens, feeding only the context up to the target.)"""
    (H, W), (h, w) = grid, WINDOW
    idx = torch.zeros(1, H, W, dtype=torch.long)  # (1, H, W)
    with torch.inference_mode():
        for i in range(H):
            for j in range(W):
                top, left = window_start(i, H, h), window_start(j, W, w)
                patch = torch.cat([prefix_for_window(top, left), idx[:, top:top + h, left:left + w].reshape(1, -1)], 1)
                logits = gpt(patch[:, :-1])[:, -h * w:]  # (1, h*w, V): the logits of the window's codes
                idx[:, i, j] = sample_logits(logits[:, (i - top) * w + j - left], generator=generator)
    return idx


def sliding(grid: tuple[int, int], stride: int | None) -> dict:
    """One whole image; stride None is the reference sampler."""
    if stride is None:
        _as_reference()
    gpt = _gpt()
    cond = torch.randint(1024, grid, generator=torch.Generator().manual_seed(1))  # (H, W) condition codes

    def prefix_for_window(top: int, left: int) -> torch.Tensor:
        return cond[top : top + WINDOW[0], left : left + WINDOW[1]].reshape(1, PREFIX)  # (1, 256)

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if stride is None:
        taming_reference(gpt, prefix_for_window, grid, generator)
    else:
        sample_sliding(gpt, prefix_for_window, grid, WINDOW, stride=stride, generator=generator)
    return {"seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 384x256 image instead of 1024x576")
    parser.add_argument("--rounds", type=int, default=2, help="alternating raster runs of each kind; the best counts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"cached": [], "uncached": []}
    for _ in range(args.rounds):  # alternating processes; interference only ever slows a run down
        for name in runs:
            runs[name].append(isolated(args.threads, raster, name == "cached"))
    rasters: dict = {name: max(found, key=lambda run: run["tokens_per_s"]) for name, found in runs.items()}
    rasters["speedup"] = round(rasters["cached"]["tokens_per_s"] / rasters["uncached"]["tokens_per_s"], 2)

    grid = (16, 24) if args.quick else (36, 64)
    runs = {"reference (taming: stride 1, whole window per token)": isolated(args.threads, sliding, grid, None)}
    for stride in STRIDES:
        runs[f"stride {stride}"] = isolated(args.threads, sliding, grid, stride)
    reference = runs["reference (taming: stride 1, whole window per token)"]["seconds"]
    for run in runs.values():
        run["speedup_vs_reference"] = round(reference / run["seconds"], 2)
    result = {
        "model": {"n_layer": 8, "n_embd": 512, "n_head": 8, "vocab_size": 1024, "block_size": 512,
                  "threads": args.threads, "torch": torch.__version__},
        "raster_256_tokens": rasters,
        "sliding_window": {"image": "384x256" if args.quick else "1024x576", "factor": 16, "grid": list(grid),
                           "window": list(WINDOW), "prefix_tokens": PREFIX, "runs": runs},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
