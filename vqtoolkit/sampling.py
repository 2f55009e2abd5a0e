"""Autoregressive sampling of code grids: raster order with a KV cache, and sliding windows.

The sampler knows nothing about conditions: it receives condition tokens as a prefix (or, for
sliding windows, a callback that returns the prefix for each window position) and returns code
indices. Every function takes an explicit `torch.Generator` so samples are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from typing import Any

import torch
import torch.nn.functional as F

from vqtoolkit.errors import VqtError
from vqtoolkit.models.transformer import GPT, KVCache

Progress = Callable[[int, int], None]
PrefixForWindow = Callable[[int, int], torch.Tensor]


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    n_codes: int | None = None,
) -> torch.Tensor:
    """Draw one token per row of `logits` (B, V) -> (B,).

    Order as in taming (temperature, then top-k keeping ties) followed by nucleus filtering;
    greedy decoding is ``top_k=1``. Always one multinomial draw per row, so the generator advances
    the same way whatever the filters. `n_codes`: draw only ids below it, the image codebook's (the
    vocabulary may be larger: it also holds condition tokens, e.g. a null token for guidance).
    """
    logits = logits if n_codes is None else logits[:, :n_codes]
    if not temperature > 0:
        raise VqtError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise VqtError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise VqtError(f"top_p must lie in (0, 1], got {top_p}")
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        sorted_probs = F.softmax(sorted_logits, dim=-1)  # (B, V)
        # Keep the smallest set of top-ranked tokens holding at least top_p of the mass: drop a
        # token when those ranked above it already do (the first token always survives).
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V), back in vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


@contextmanager
def eval_mode(gpt: GPT) -> Iterator[None]:
    """Sampling must not see dropout; the caller's mode comes back afterwards. inference_mode skips
    autograd's bookkeeping, which matters for one-token cached steps."""
    was_training = gpt.training
    gpt.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        gpt.train(was_training)


def check_prefix(prefix: torch.Tensor, batch_size: int | None = None) -> None:
    """A window's condition tokens: (batch, n >= 1) long, the batch unchanged from the first window."""
    if prefix.dim() != 2 or prefix.dtype != torch.long or prefix.shape[1] < 1:
        raise VqtError(
            f"prefix must be a (batch, n >= 1) long tensor of condition tokens (use a start token for "
            f"unconditional models), got {tuple(prefix.shape)} {prefix.dtype}"
        )
    if batch_size is not None and prefix.shape[0] != batch_size:
        raise VqtError(f"prefix batch size changed from {batch_size} to {prefix.shape[0]} between windows")


def sample_raster(
    gpt: GPT,
    prefix: torch.Tensor,
    n_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_codes: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Sample `n_tokens` after `prefix` (B, P) -> (B, n_tokens).

    With the cache: one forward over the prefix, then one single-token step per token. Without:
    a full forward over the growing sequence per token (taming's behaviour, kept as a reference).
    Taming crops the context to the last block_size tokens; that would drop the condition, so the
    whole sequence must fit instead (use `sample_sliding` for larger grids).
    """
    check_prefix(prefix)
    B, P = prefix.shape
    if P + n_tokens - 1 > gpt.block_size:
        raise VqtError(
            f"{P} prefix + {n_tokens} image tokens exceed the transformer's block_size {gpt.block_size}; "
            f"sample larger grids with sliding windows"
        )
    out = torch.empty(B, n_tokens, dtype=torch.long, device=prefix.device)  # (B, N)
    with eval_mode(gpt):
        cache = gpt.new_cache(B, P + n_tokens - 1) if use_cache else None
        logits = gpt(prefix, cache)[:, -1]  # (B, V)
        for k in range(n_tokens):
            out[:, k] = sample_logits(logits, temperature, top_k, top_p, generator, n_codes)
            if progress is not None:
                progress(k + 1, n_tokens)
            if k + 1 == n_tokens:
                break
            if use_cache:
                logits = gpt(out[:, k : k + 1], cache)[:, -1]  # (B, V)
            else:
                logits = gpt(torch.cat([prefix, out[:, : k + 1]], dim=1))[:, -1]  # (B, V)
    return out


def window_start(i: int, n: int, size: int) -> int:
    """First row (or column) of the window of `size` that generates index `i` of an axis of `n`.

    Taming's scripts/sample_conditional.py: the target sits at local index i near the start,
    at size//2 in the middle, and the window is flush with the end near the end. For even sizes
    this equals taming's arithmetic (local = i if i <= size//2, size - (n - i) if n - i < size//2,
    else size//2); for odd sizes that arithmetic would leave the grid one step early, so the
    window is clamped to the grid instead.
    """
    return min(max(i - size // 2, 0), n - size)


def check_sliding(grid: tuple[int, int], window: tuple[int, int], stride: int) -> None:
    """The window fits the grid and the stride fits the window."""
    (H, W), (h, w) = grid, window
    if h < 1 or w < 1 or H < h or W < w:
        raise VqtError(f"grid {H}x{W} must be at least as large as the window {h}x{w} (rows x columns)")
    if not 1 <= stride <= w:
        raise VqtError(f"window stride must lie in 1..{w} (the window width), got {stride}")


def window_context(
    prefix: torch.Tensor, idx: torch.Tensor, i: int, top: int, left: int, end: int, w: int
) -> torch.Tensor:
    """Prefix + window tokens in raster order before (i, end): full window rows above row i, then
    row i from the window's left edge up to column `end`."""
    B = prefix.shape[0]
    above = idx[:, top:i, left : left + w].reshape(B, -1)  # (B, (i - top) * w)
    return torch.cat([prefix, above, idx[:, i, left:end]], dim=1)  # (B, P + (i - top) * w + end - left)


def check_window_fits(gpt: GPT, prefix: torch.Tensor, window: tuple[int, int]) -> None:
    """Prefix plus a whole window's context must fit the transformer's positions."""
    n = prefix.shape[1] + window[0] * window[1] - 1
    if n > gpt.block_size:
        raise VqtError(
            f"{prefix.shape[1]} prefix tokens + a {window[0]}x{window[1]} window need {n} positions, "
            f"more than the transformer's block_size {gpt.block_size}"
        )


def sample_sliding(
    gpt: GPT,
    prefix_for_window: PrefixForWindow,
    grid: tuple[int, int],
    window: tuple[int, int],
    *,
    stride: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_codes: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Sample a (B, H, W) grid larger than the model's window (paper Fig. 3).

    Rows are generated top to bottom, each row left to right. The window's top for row i is
    ``window_start(i, H, h)``, as in taming. Along a row the window moves `stride` = S tokens at a
    time: the row is cut into placements of columns [a, a + S) for a = 0, S, 2S, ... (the last one
    may be shorter), and a placement uses the window taming would use for its centre column,
    ``left = window_start(a + S // 2, W, w)``. Its targets then sit at local columns
    [w//2 - S//2, w//2 + ceil(S/2)) in the middle of the grid, start at local 0 at the left edge
    and end flush at the right edge, so for every S <= w each token is generated exactly once,
    inside a window that never leaves the grid, and every raster predecessor of a target inside
    that window (the rows above, and row i from `left`) is already known. One placement costs one
    forward over the window's context and then one KV-cached step per further target, about S times
    fewer full forwards than S = 1, which reproduces taming (token for token in the tests). Windows
    that recur (see `WindowCaches`) keep their cache, so their context forward covers only the codes
    generated since their last placement.

    `prefix_for_window(top, left)` returns the condition tokens (B, P) for the window at that
    position: a crop of a spatial condition with the same window, or a start/class token.
    """
    H, W = grid
    h, w = window
    check_sliding(grid, window, stride)
    idx: torch.Tensor | None = None
    caches: WindowCaches | None = None
    with eval_mode(gpt):
        for i in range(H):
            top = window_start(i, H, h)
            for a in range(0, W, stride):
                b = min(a + stride, W)
                left = window_start(a + stride // 2, W, w)
                prefix = prefix_for_window(top, left)
                check_prefix(prefix, None if idx is None else idx.shape[0])
                if idx is None:
                    check_window_fits(gpt, prefix, window)
                    idx = torch.zeros(prefix.shape[0], H, W, dtype=torch.long, device=prefix.device)  # (B, H, W)
                    caches = WindowCaches(gpt, prefix.shape[0], prefix.shape[1] + h * w - 1)
                cache = caches.get(top, left)
                context = window_context(prefix, idx, i, top, left, a, w)  # (B, n)
                logits = gpt(context[:, cache.length :], cache)[:, -1]  # (B, V)
                for j in range(a, b):
                    idx[:, i, j] = sample_logits(logits, temperature, top_k, top_p, generator, n_codes)
                    if progress is not None:
                        progress(i * W + j + 1, H * W)
                    if j + 1 < b:
                        logits = gpt(idx[:, i, j : j + 1], cache)[:, -1]  # (B, V)
    return idx


class WindowCaches:
    """KV caches of window placements that recur, so a placement only computes its new tokens.

    A window at (top, left) always sees the same condition tokens and, in raster order, a growing
    run of the same known codes, so its cache stays valid: when the window returns (the first and
    last rows share one top; the first and last columns share one left) only the codes generated
    since are fed. Tops only grow, so the caches of an earlier top are recycled. The kept caches
    use at most a quarter of the memory free on the device when sampling starts; placements beyond
    that share one scratch cache and recompute their context.
    """

    def __init__(self, gpt: GPT, batch_size: int, max_len: int) -> None:
        self.gpt, self.batch_size, self.max_len = gpt, batch_size, max_len
        self.scratch = gpt.new_cache(batch_size, max_len)
        size = self.scratch.keys.nbytes + self.scratch.values.nbytes
        self.capacity = _free_bytes(self.scratch.keys.device) // 4 // size
        self.top: int | None = None
        self.by_left: dict[int, KVCache] = {}
        self.spare: list[KVCache] = []

    def get(self, top: int, left: int) -> KVCache:
        """The cache of the window at (top, left): the one it left behind, or an empty one."""
        if top != self.top:
            self.top = top
            self.spare += self.by_left.values()
            self.by_left.clear()
        if left in self.by_left:
            return self.by_left[left]
        cache = self.scratch
        if len(self.by_left) < self.capacity:
            cache = self.spare.pop() if self.spare else self.gpt.new_cache(self.batch_size, self.max_len)
            self.by_left[left] = cache
        cache.reset()
        return cache


def _free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device`: CUDA's free memory; on Linux, MemAvailable (free
    RAM plus reclaimable page cache); elsewhere, free physical pages, or 1 GiB if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return 2**30


def sample_sliding_reference(
    gpt: GPT,
    prefix_for_window: PrefixForWindow,
    grid: tuple[int, int],
    window: tuple[int, int],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Taming's sliding-window sampler, written plainly: one uncached forward per token.

    Kept as the ground truth for tests and benchmarks; `sample_sliding(stride=1)` must match it
    token for token.
    """
    H, W = grid
    h, w = window
    check_sliding(grid, window, 1)
    idx: torch.Tensor | None = None
    with eval_mode(gpt):
        for i in range(H):
            for j in range(W):
                top, left = window_start(i, H, h), window_start(j, W, w)
                prefix = prefix_for_window(top, left)
                check_prefix(prefix, None if idx is None else idx.shape[0])
                if idx is None:
                    check_window_fits(gpt, prefix, window)
                    idx = torch.zeros(prefix.shape[0], H, W, dtype=torch.long, device=prefix.device)  # (B, H, W)
                logits = gpt(window_context(prefix, idx, i, top, left, j, w))[:, -1]  # (B, V)
                idx[:, i, j] = sample_logits(logits, temperature, top_k, top_p, generator)
                if progress is not None:
                    progress(i * W + j + 1, H * W)
    return idx


class GuidedGPT(torch.nn.Module):
    """Classifier-free guidance as a drop-in GPT for the samplers: logits = u + s·(c − u).

    Each sequence runs twice in one batch: as given (c) and with its first `len(null)` prefix tokens
    replaced by the null condition (u). Works with and without the KV cache.
    """

    def __init__(self, gpt: GPT, null: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.gpt, self.null, self.scale = gpt, null, scale

    @property
    def block_size(self) -> int:
        return self.gpt.block_size

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Any:
        return self.gpt.new_cache(2 * batch_size, max_len)

    def forward(self, idx: torch.Tensor, cache: Any = None) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        uncond = idx.clone()  # (B, T)
        n = min(len(self.null) - start, idx.shape[1])
        if n > 0:
            uncond[:, :n] = self.null[start:start + n].to(idx.device)
        cond_logits, uncond_logits = self.gpt(torch.cat([idx, uncond]), cache).chunk(2)  # (B, T, V) each
        return uncond_logits + self.scale * (cond_logits - uncond_logits)
