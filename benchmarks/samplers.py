"""Timed sampling runs that `sampling.py` (CPU) and `gpu_check.py` (CUDA) share.

Each function is one figure, meant to run in its own process (harness.guarded / isolated): it builds a
GPT with random weights (the same in every process), times one sampler, and returns a dict.
"reference" runs taming's computation: one full forward per token with minGPT's attention (explicit
scores and mask) in place of SDPA. Memory: on CUDA the peak of torch's allocator while sampling
(model included); on CPU the sampling's own peak resident memory (the kernel's high-water mark reset
after the model is built: torch has no CPU allocator statistics, and tracemalloc sees only Python's
own allocations, not tensors).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.sampling import sample_logits, sample_raster, sample_sliding, window_start


@dataclass(frozen=True)
class Setup:
    """The model and the image: a GPT with random weights, a code grid, a window and its condition."""

    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    vocab_size: int = 1024
    grid: tuple[int, int] = (36, 64)  # 1024x576 at f16
    window: tuple[int, int] = (16, 16)
    prefix: int = 256  # condition tokens per window, as a depth condition's window crop gives
    neighbourhood: tuple[int, int] = (8, 16)  # the local transformer's: rows above, column span
    device: str = "cpu"

    @property
    def block_size(self) -> int:
        return self.prefix + self.window[0] * self.window[1]

    def describe(self) -> dict:
        return {**asdict(self), "block_size": self.block_size}


def as_reference() -> None:
    """Give this (reference-only) process taming's minGPT attention: explicit scores, a mask buffer,
    softmax, and the stacked (k, v) `present` it returns for every call; vqtoolkit uses SDPA."""
    from vqtoolkit.models import transformer

    masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        hs = C // self.n_head
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)
        torch.stack((k, v))  # taming's `present`
        mask = masks.get((T, x.device))
        if mask is None:
            mask = masks[T, x.device] = torch.tril(torch.ones(T, T, device=x.device)).view(1, 1, T, T)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))

    transformer.CausalSelfAttention.forward = forward


def build_gpt(setup: Setup) -> GPT:
    """The same random weights in every process, on the setup's device, warmed up."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=setup.vocab_size, block_size=setup.block_size, n_layer=setup.n_layer,
                       n_head=setup.n_head, n_embd=setup.n_embd)
    gpt = GPT(config).to(setup.device).eval()
    with torch.inference_mode():
        gpt(torch.zeros(1, setup.block_size - 1, dtype=torch.long, device=setup.device))
    return gpt


class Meter:
    """Wall-clock seconds and peak memory of what runs between `start` and `stop`."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss = _proc_status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as clear:  # resets VmHWM to the current RSS
                clear.write("5")
        self.started = time.perf_counter()

    def stop(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.started
        if self.cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
            return {"seconds": round(seconds, 3), "peak_allocated_mb": round(peak, 1)}
        peak = (_proc_status_kb("VmHWM") - self.rss) / 1024
        return {"seconds": round(seconds, 3), "sampling_peak_rss_mb": round(peak, 1)}


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _condition(setup: Setup):
    """Random condition codes over the grid, and the window crop that conditions each placement."""
    cond = torch.randint(setup.vocab_size, setup.grid, generator=torch.Generator().manual_seed(1)).to(setup.device)
    h, w = setup.window

    def prefix_for_window(top: int, left: int) -> torch.Tensor:
        crop = cond[top : top + h, left : left + w].reshape(1, -1)  # (1, h*w)
        return crop[:, : setup.prefix]

    return prefix_for_window


def taming_reference(gpt: GPT, prefix_for_window, setup: Setup, generator: torch.Generator,
                     max_tokens: int | None = None) -> int:
    """Taming's scripts/sample_conditional.py, step for step: for every token, the condition and the
    whole window (its codes after the target included, which causal attention ignores) in one
    forward over all but the last token, and the logits read at the target's place in the window.
    Stops after `max_tokens` (raster order); returns how many it drew."""
    (H, W), (h, w) = setup.grid, setup.window
    idx = torch.zeros(1, H, W, dtype=torch.long, device=setup.device)  # (1, H, W)
    drawn = 0
    with torch.inference_mode():
        for i in range(H):
            for j in range(W):
                if drawn == max_tokens:
                    return drawn
                top, left = window_start(i, H, h), window_start(j, W, w)
                patch = torch.cat([prefix_for_window(top, left), idx[:, top:top + h, left:left + w].reshape(1, -1)], 1)
                logits = gpt(patch[:, :-1])[:, -h * w:]  # (1, h*w, V): the logits of the window's codes
                idx[:, i, j] = sample_logits(logits[:, (i - top) * w + j - left], generator=generator)
                drawn += 1
    return drawn


def sliding(setup: Setup, stride: int | None, max_tokens: int | None = None) -> dict:
    """One image with vqtoolkit's `sample_sliding` at `stride`, or (stride None) with taming's loop.
    The reference may stop after `max_tokens`: each of its tokens costs one forward over the same 511
    positions wherever it lies, so the time scales to the whole grid exactly but for noise."""
    if stride is None:
        as_reference()
    gpt = build_gpt(setup)
    prefix_for_window = _condition(setup)
    generator = torch.Generator(setup.device).manual_seed(0)
    meter = Meter(setup.device)
    meter.start()
    if stride is None:
        drawn = taming_reference(gpt, prefix_for_window, setup, generator, max_tokens)
    else:
        sample_sliding(gpt, prefix_for_window, setup.grid, setup.window, stride=stride, generator=generator)
        drawn = setup.grid[0] * setup.grid[1]
    result = meter.stop()
    total = setup.grid[0] * setup.grid[1]
    if drawn < total:
        result = {**result, "tokens_timed": drawn, "seconds_timed": result["seconds"],
                  "seconds": round(result["seconds"] * total / drawn, 2), "extrapolated": True}
    return result


def local(setup: Setup) -> dict:
    """One image with the local transformer's rolling-cache sampler (`transformer.attention = "local"`,
    the setup's width and depth), conditioned on a grid of random condition codes."""
    from vqtoolkit.models.local_transformer import LocalGPT
    from vqtoolkit.sampling_local import sample_local

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=setup.vocab_size, block_size=setup.block_size, n_layer=setup.n_layer,
                       n_head=setup.n_head, n_embd=setup.n_embd, attention="local", neighbourhood=setup.neighbourhood)
    gpt = LocalGPT(config, setup.window[0], grid_condition=True).to(setup.device).eval()
    cond = torch.randint(setup.vocab_size, (1, *setup.grid), generator=torch.Generator().manual_seed(1))
    cond = cond.to(setup.device)  # (1, H, W)
    warm = (min(setup.window[0], setup.grid[0]), min(setup.window[1], setup.grid[1]))
    sample_local(gpt, cond[:, : warm[0], : warm[1]], warm)  # warm-up
    meter = Meter(setup.device)
    meter.start()
    sample_local(gpt, cond, setup.grid, generator=torch.Generator(setup.device).manual_seed(0))
    return meter.stop()


def raster(setup: Setup, use_cache: bool, n_tokens: int = 256, repeats: int = 3) -> dict:
    """Tokens per second of `sample_raster` over `n_tokens` after one start token (the median of
    `repeats` runs); without the cache, taming's computation."""
    if not use_cache:
        as_reference()
    gpt = build_gpt(setup)
    seconds = []
    for _ in range(repeats):
        meter = Meter(setup.device)
        meter.start()
        sample_raster(gpt, torch.zeros(1, 1, dtype=torch.long, device=setup.device), n_tokens,
                      generator=torch.Generator(setup.device).manual_seed(0), use_cache=use_cache)
        seconds.append(meter.stop()["seconds"])
    return {"tokens_per_s": round(n_tokens / sorted(seconds)[len(seconds) // 2], 1)}
