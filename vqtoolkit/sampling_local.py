"""The rolling-cache sampler of the local transformer: any size, one cached step per token.

Memory. Per layer, the keys and values of the image positions live in a ring of h + 1 rows (the h
rows above and the current one) of W + 1 positions; a position's entries never change once written
(`models/local_transformer.py`), so a step writes its own and reads its neighbourhood's. A spatial
condition's keys and values live in a ring of 2h + 1 rows (h above, h below). Each ring is stored
twice over (row r in slots r mod n and r mod n + n), so any n consecutive rows are one slice: a step
reads views, never gathers by index.

The condition's rows are computed in bands: a condition token's layer-l state depends on the
condition rows within l·h of it, so a band of rows [s, e) is computed exactly from input rows
[s - m, e + m), m = (L - 1)·h, one query row at a time (keys within h rows). Bands are 2m rows (at
least 2h + 1), so the condition costs about twice its own forward, and nothing held grows with the
image height: memory is bounded by about 4m rows of the image width (measured on CPU, f16, 8 layers,
512 wide, h = 8: 2048x2048 and 2048x4096 add 1.41 and 1.49 GB).

Guidance runs the conditional and the null-condition streams as one doubled batch, as GuidedGPT.
"""

from __future__ import annotations

import torch

from .errors import VqtError
from .models.local_transformer import GLOBAL, GRID, IMAGE, LocalGPT, condition_layout, grid_coords
from .sampling import Progress, eval_mode, sample_logits


Guidance = tuple[torch.Tensor, float] | None  # (null condition tokens, scale) for classifier-free guidance


class RollingCache:
    """Keys and values of the last h + 1 image rows, per layer, padded by a columns on each side so
    every neighbourhood is one slice: (L, B, nh, 2(h + 1), W + 2a + 2, hs) each (the ring twice)."""

    def __init__(self, gpt: LocalGPT, batch: int, width: int) -> None:
        hs = gpt.n_embd // gpt.n_head
        w = gpt.tok_emb.weight
        shape = (gpt.n_layer, batch, gpt.n_head, 2 * (gpt.rows + 1), width + 2 * gpt.half + 2, hs)
        self.keys = torch.zeros(shape, dtype=w.dtype, device=w.device)
        self.values = torch.zeros(shape, dtype=w.dtype, device=w.device)


class ConditionRows:
    """Per-layer keys and values of a condition for the rows a step needs (see the module docstring).

    Global conditions: (L, B, nh, P, hs), computed once. Grids: a ring of 2h + 1 rows stored twice,
    (L, B, nh, 2(2h + 1), W + 2a + 1, hs), filled from bands as the sampler moves down."""

    def __init__(self, gpt: LocalGPT, cond: torch.Tensor) -> None:
        self.gpt, self.cond = gpt, cond
        self.grid = gpt.grid_condition
        if not self.grid:
            self.keys, self.values = self._states(cond, 0, 0, cond.shape[1])
            return
        B, H, W = cond.shape
        L, nh, h, a = gpt.n_layer, gpt.n_head, gpt.rows, gpt.half
        w = gpt.tok_emb.weight
        shape = (L, B, nh, 2 * (2 * h + 1), W + 2 * a + 1, gpt.n_embd // nh)
        self.keys = torch.zeros(shape, dtype=w.dtype, device=w.device)
        self.values = torch.zeros(shape, dtype=w.dtype, device=w.device)
        self.margin = (L - 1) * h
        self.band = max(2 * self.margin, 2 * h + 1)
        self.band_start, self.band_end = 0, 0
        self.band_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.filled = 0  # rows copied into the ring so far

    def advance(self, y: int) -> None:
        """Make rows up to y + h available (grids only)."""
        if not self.grid:
            return
        H = self.cond.shape[1]
        h, a = self.gpt.rows, self.gpt.half
        while self.filled < min(y + h + 1, H):
            r = self.filled
            if r >= self.band_end:
                self.band_start, self.band_end = r, min(r + self.band, H)
                lo, hi = max(0, r - self.margin), min(H, self.band_end + self.margin)
                self.band_kv = self._states(self.cond[:, lo:hi], lo, r - lo, self.band_end - r)
            k, v = self.band_kv  # (L, B, nh, rows, W, hs) each
            W = self.cond.shape[2]
            for slot in (r % (2 * h + 1), r % (2 * h + 1) + 2 * h + 1):
                self.keys[:, :, :, slot, a:a + W] = k[:, :, :, r - self.band_start]
                self.values[:, :, :, slot, a:a + W] = v[:, :, :, r - self.band_start]
            self.filled += 1

    def _states(self, cond: torch.Tensor, top: int, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer keys and values of `count` rows from row `first` of `cond` (all its tokens, for
        global ones), a band whose first row is image row `top`: (L, B, nh, count(, W), hs) each.

        Attention runs one query row at a time over the rows within h of it, so no mask is larger than
        W x (2h + 1)·W; rows with as many key rows off the band share one."""
        gpt, h = self.gpt, self.gpt.rows
        x = gpt.embed_condition(cond)  # (B, T, C)
        yx, kind = condition_layout(cond, self.grid, x.device, top)
        rows, per_row = (cond.shape[1], cond.shape[2]) if self.grid else (1, cond.shape[1])
        spans = [(s * per_row, (s + 1) * per_row, max(0, s - h) * per_row, min(rows, s + h + 1) * per_row)
                 for s in range(rows)]  # per query row: its tokens [qs, qe) and its keys' [ks, ke)
        masks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for s, (qs, qe, ks, ke) in enumerate(spans):
            if row_kind(s, rows, h) not in masks:
                masks[row_kind(s, rows, h)] = gpt.neighbourhood(yx[qs:qe], kind[qs:qe], yx[ks:ke], kind[ks:ke])
        keys, values = [], []
        for layer, block in enumerate(gpt.blocks):
            q, k, v = block.attn.qkv(block.ln1(x))  # (B, nh, T, hs) each
            if self.grid:  # keep the band's rows only
                keys.append(k.unflatten(2, (rows, per_row))[:, :, first:first + count].clone())
                values.append(v.unflatten(2, (rows, per_row))[:, :, first:first + count].clone())
            else:
                keys.append(k)
                values.append(v)
            if layer + 1 == gpt.n_layer:
                break  # the last layer's keys and values are all the image needs
            out, current, bias = [], None, None
            for s, (qs, qe, ks, ke) in enumerate(spans):
                if row_kind(s, rows, h) != current:
                    current = row_kind(s, rows, h)
                    bias = gpt.bias(*masks[current], layer=layer)[None]  # (1, nh, W, keys)
                out.append(block.attn.mix(q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke], bias))
            x = x + torch.cat(out, dim=1)
            x = x + block.mlp(block.ln2(x))
        return torch.stack(keys), torch.stack(values)


def sample_local(
    gpt: LocalGPT,
    cond: torch.Tensor,
    grid: tuple[int, int],
    *,
    codes: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    guidance: Guidance = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_codes: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Sample a (B, H, W) code grid in raster order with the rolling cache.

    `cond`: a condition grid (B, H, W), or global tokens (B, P) (the start token when unconditional).
    Editing: with `codes` (B, H, W) and `mask` (H, W) bool, only masked codes are drawn, the others
    are kept bit for bit (every position is still run, so each drawn code sees all it may).
    `guidance` (null tokens, scale): classifier-free guidance, logits = u + scale·(c − u)."""
    H, W = grid
    B = cond.shape[0]
    if gpt.grid_condition and tuple(cond.shape[1:]) != (H, W):
        raise VqtError(f"the condition grid is {tuple(cond.shape[1:])} but the image grid is {(H, W)}")
    guided = guidance is not None
    if guidance is not None:
        null, cfg_scale = guidance
        cond = torch.cat([cond, null_condition(cond, null)])
    idx = torch.zeros(B, H, W, dtype=torch.long, device=cond.device) if codes is None else codes.clone()
    todo = torch.ones(H, W, dtype=torch.bool) if mask is None else mask.cpu()
    total, done = int(todo.sum()), 0
    h, a = gpt.rows, gpt.half
    with eval_mode(gpt):
        conditions = ConditionRows(gpt, cond)
        cache = RollingCache(gpt, cond.shape[0], W)
        masks: dict[int, torch.Tensor] = {}  # by column, for rows of one kind (see `row_kind`)
        kind = None
        for y in range(H):
            conditions.advance(y)
            if row_kind(y, H, h) != kind:
                kind, masks = row_kind(y, H, h), {}
            for x in range(W + 1):
                if x not in masks:
                    masks[x] = step_bias(gpt, y, x, H, W)
                token = None if x == 0 else idx[:, y, x - 1]
                if token is not None and guided:
                    token = token.repeat(2)
                state = step(gpt, cache, conditions, token, y, x, masks[x])
                if x == W or not todo[y, x]:
                    continue
                logits = gpt.head(gpt.ln_f(state[:, 0]))  # (B', V)
                if guided:
                    c, u = logits.chunk(2)
                    logits = u + cfg_scale * (c - u)
                idx[:, y, x] = sample_logits(logits, temperature, top_k, top_p, generator, n_codes)
                done += 1
                if progress is not None:
                    progress(done, total)
    return idx


def row_kind(y: int, H: int, h: int) -> tuple[int, int]:
    """Rows of one kind share their masks: how many of the h rows above and below lie off the grid."""
    return max(0, h - y), max(0, y + h - (H - 1))


def null_condition(cond: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """The guidance stream's condition: the first len(null) global tokens replaced (as GuidedGPT), or a
    grid filled with a single null token."""
    null = null.to(cond.device)
    uncond = cond.clone()
    if cond.ndim == 3:
        if len(null) != 1:
            raise VqtError(f"guidance of a grid condition needs one null token, the plugin gives {len(null)}")
        return uncond.fill_(int(null[0]))
    n = min(len(null), cond.shape[1])
    uncond[:, :n] = null[:n]
    return uncond


def step_bias(gpt: LocalGPT, y: int, x: int, H: int, W: int) -> torch.Tensor:
    """Masks (L, 1, nh, 1, K) of position (y, x) over the keys `step` reads, in its order: image rows
    y - h .. y, columns x - a + 1 .. x + a + 1; then condition rows y - h .. y + h, columns
    x - a .. x + a (or the global tokens). Keys off the grid are masked."""
    h, a, dev = gpt.rows, gpt.half, gpt.tok_emb.weight.device
    ry = torch.arange(y - h, y + 1, device=dev)[:, None].expand(h + 1, 2 * a + 1)
    rx = torch.arange(x - a + 1, x + a + 2, device=dev)[None].expand(h + 1, 2 * a + 1)
    img = torch.stack([ry.flatten(), rx.flatten()], dim=1)
    on = (img[:, 0] >= 0) & (img[:, 1] >= 0) & (img[:, 1] <= W)
    kinds = [torch.full((len(img),), IMAGE, device=dev)]
    if gpt.grid_condition:
        cy = torch.arange(y - h, y + h + 1, device=dev)[:, None].expand(2 * h + 1, 2 * a + 1)
        cx = torch.arange(x - a, x + a + 1, device=dev)[None].expand(2 * h + 1, 2 * a + 1)
        cyx = torch.stack([cy.flatten(), cx.flatten()], dim=1)
        on = torch.cat([on, (cyx[:, 0] >= 0) & (cyx[:, 0] < H) & (cyx[:, 1] >= 0) & (cyx[:, 1] < W)])
        img, kinds = torch.cat([img, cyx]), kinds + [torch.full((len(cyx),), GRID, device=dev)]
    else:
        n = gpt.n_prefix
        img = torch.cat([img, torch.zeros(n, 2, dtype=torch.long, device=dev)])
        on = torch.cat([on, torch.ones(n, dtype=torch.bool, device=dev)])
        kinds.append(torch.full((n,), GLOBAL, device=dev))
    query = torch.tensor([[y, x]], device=dev)
    index, allowed = gpt.neighbourhood(query, torch.tensor([IMAGE], device=dev), img, torch.cat(kinds))
    return gpt.bias(index, allowed & on)[:, None]  # (L, 1, nh, 1, K)


def step(gpt: LocalGPT, cache: RollingCache, conditions: ConditionRows, token: torch.Tensor | None,
         y: int, x: int, bias: torch.Tensor) -> torch.Tensor:
    """Run position (y, x) (its input: `token` (B,), or the row start) through every layer, storing its
    keys and values; returns its final state (B, 1, C)."""
    h, a = gpt.rows, gpt.half
    B = cache.keys.shape[1]
    state = gpt.row_start.expand(B, 1, -1) if token is None else gpt.tok_emb(token)[:, None]
    n, m = h + 1, 2 * h + 1
    top, ctop = (y - h) % n, (y - h) % m  # slots of rows y - h in the doubled rings
    for layer, block in enumerate(gpt.blocks):
        q, k, v = block.attn.qkv(block.ln1(state))  # (B, nh, 1, hs) each
        for slot in (y % n, y % n + n):
            cache.keys[layer, :, :, slot, x + a] = k[:, :, 0]
            cache.values[layer, :, :, slot, x + a] = v[:, :, 0]
        keys = cache.keys[layer, :, :, top:top + n, x + 1:x + 2 * a + 2].flatten(2, 3)  # (B, nh, (h+1)(2a+1), hs)
        values = cache.values[layer, :, :, top:top + n, x + 1:x + 2 * a + 2].flatten(2, 3)
        if conditions.grid:
            ck = conditions.keys[layer, :, :, ctop:ctop + m, x:x + 2 * a + 1].flatten(2, 3)  # (B, nh, (2h+1)(2a+1), hs)
            cv = conditions.values[layer, :, :, ctop:ctop + m, x:x + 2 * a + 1].flatten(2, 3)
        else:
            ck, cv = conditions.keys[layer], conditions.values[layer]  # (B, nh, P, hs)
        keys, values = torch.cat([keys, ck], dim=2), torch.cat([values, cv], dim=2)
        state = state + block.attn.mix(q, keys, values, bias[layer])
        state = state + block.mlp(block.ln2(state))
    return state
