"""Stage-2 transformer with causal 2-D neighbourhood attention (recipe: transformer.attention = "local").

Why: minGPT attends over a whole window, so images larger than the window need the sliding-window
sampler, one window's forward per placement. Here every token attends to a fixed neighbourhood of
its own, so one rolling cache of the last rows samples any size at one cached step per token
(`sampling_local.py`), and memory grows with the image width only.

Positions. Token (y, x) is predicted by the *position* (y, x), whose input is the token before it in
its row, (y, x - 1), or a learned row-start vector at x = 0. A row has one more position, (y, W),
holding the row's last token so that the rows below can see it; it predicts nothing. Position (y, x)
attends, with neighbourhood (h, w) and a = w // 2:
  - image positions (y, x') with x - a + 1 <= x' <= x: the a tokens before it in its row;
  - image positions (y - dy, x') for 1 <= dy <= h, x - a + 1 <= x' <= x + a + 1: tokens x - a .. x + a
    of the h rows above;
  - a spatial/positional condition's tokens (y + dy, x + dx) with |dy| <= h, |dx| <= a (the condition
    is known in full, so rows below count); these attend to each other in the same non-causal
    neighbourhood and do not depend on the image, so they are computed once per image;
  - every token of a global condition (class; the start token of an unconditional model), which
    attend to each other.
Scores get a learned bias per layer, head and (dy, dx) offset (scaled: see `LocalGPT.tables`); there
are no absolute positions, so a token's keys and values depend only on what lies before it in raster
order within its receptive field, never on the image size: cached entries stay valid for every later
token.

Training and `vqt eval` call the model as minGPT: ``gpt(cat(prefix, image)[:, :-1])`` on a
window x window crop, with logits from position P - 1 on predicting the image (`image_loss`); the
crop's edges are treated as an image's edges. The first P - 1 logits are zeros (no one reads them).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqtoolkit.errors import VqtError
from vqtoolkit.models.transformer import GPT, CausalSelfAttention, GPTConfig, feed_forward

IMAGE, GRID, GLOBAL = 0, 1, 2  # what a token is: an image position, a condition-grid token, a global token
BIAS_SCALE = 16.0  # the bias parameters hold logits / BIAS_SCALE, so Adam can move them fast enough (`tables`)


class LocalAttention(CausalSelfAttention):
    """Multi-head attention under an additive mask: minGPT's projections (the parent's), its own forward."""

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> queries, keys, values (B, nh, T, hs) each."""
        B, T, C = x.shape
        split = (B, T, self.n_head, C // self.n_head)
        return tuple(f(x).view(split).transpose(1, 2) for f in (self.query, self.key, self.value))  # type: ignore

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attend q (B, nh, T, hs) over k, v (B, nh, S, hs) with bias (.., nh, T, S) -> (B, T, C)."""
        p = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, nh, T, hs)
        B, nh, T, hs = y.shape
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, nh * hs)))


class LocalBlock(nn.Module):
    """Pre-norm block as minGPT's; attention is split so the sampler can cache between q/k/v and mix."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = LocalAttention(n_embd, n_head, attn_pdrop, resid_pdrop)
        self.mlp = feed_forward(n_embd, resid_pdrop)


class LocalGPT(nn.Module):
    """Decoder over code grids with causal neighbourhood attention (see the module docstring).

    `window`: the training crop's side; `grid_condition`: the prefix is a window x window condition
    grid (spatial/positional) rather than global tokens. Both come from the stage-2 model, not the
    config, because they describe the data the model reads."""

    def __init__(self, config: GPTConfig, window: int, grid_condition: bool) -> None:
        super().__init__()
        rows, span = config.neighbourhood
        if rows < 1 or span < 2:
            raise VqtError(f"transformer.neighbourhood = [{rows}, {span}] is invalid: expected [rows above >= 1, "
                           "column span >= 2]")
        self.config, self.window, self.grid_condition = config, window, grid_condition
        self.rows, self.half = rows, span // 2
        self.vocab_size, self.block_size = config.vocab_size, config.block_size
        self.n_layer, self.n_head, self.n_embd = config.n_layer, config.n_head, config.n_embd
        self.n_prefix = config.block_size - window * window
        C, L, nh, width = config.n_embd, config.n_layer, config.n_head, 2 * self.half + 1
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.row_start = nn.Parameter(torch.zeros(C))  # the input of each row's first position
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.ModuleList(LocalBlock(C, nh, config.attn_pdrop, config.resid_pdrop) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.vocab_size, bias=False)
        self.bias_image = nn.Parameter(torch.zeros(L, nh, (rows + 1) * width))  # (dy, dx) image -> image
        if grid_condition:
            self.cond_emb = nn.Parameter(torch.zeros(C))  # tells condition tokens from codes (shared ids)
            self.bias_cond = nn.Parameter(torch.zeros(L, nh, (2 * rows + 1) * width))  # image -> condition
            self.bias_cond_self = nn.Parameter(torch.zeros(L, nh, (2 * rows + 1) * width))  # condition -> condition
        else:
            self.global_pos = nn.Parameter(torch.zeros(self.n_prefix, C))  # order of the global tokens
        self.apply(GPT._init_weights)
        nn.init.normal_(self.row_start, std=0.02)
        if grid_condition:
            nn.init.normal_(self.cond_emb, std=0.02)

    configure_optimizer = GPT.configure_optimizer  # the same grouping: only Linear weights decay

    # ---- the mask -----------------------------------------------------------------------------

    def tables(self) -> torch.Tensor:
        """Every layer's bias entries in logits (L, nh, K); index K - 1 is a constant 0 (global tokens).

        The parameters are scaled by BIAS_SCALE because Adam moves a parameter by about lr per step
        whatever its gradient: unscaled, a bias reaches at most lr × steps (0.47 after the demo's 1000
        steps at 4.8e-4), attention stays nearly uniform over the neighbourhood, and a larger
        neighbourhood only dilutes it. minGPT's positions pass through embeddings and the query/key
        projections, whose products grow much faster. Scaled, a bias can reach the ~6 logits that
        single out one code among ~70 (the one above, say) within such a budget."""
        parts = [self.bias_image]
        if self.grid_condition:
            parts += [self.bias_cond, self.bias_cond_self]
        zero = self.bias_image.new_zeros(self.n_layer, self.n_head, 1)
        return BIAS_SCALE * torch.cat(parts + [zero], dim=-1)

    def neighbourhood(self, q_yx: torch.Tensor, q_kind: torch.Tensor, k_yx: torch.Tensor,
                      k_kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which keys each query sees and where its bias sits in `tables()`: index, allowed (Q, K).

        Queries and keys are given by (y, x) coordinates (Q, 2)/(K, 2) and kinds (IMAGE, GRID, GLOBAL);
        training, the reference loop and the rolling sampler all ask this one function."""
        h, a, width = self.rows, self.half, 2 * self.half + 1
        dy = q_yx[:, None, 0] - k_yx[None, :, 0]  # (Q, K): rows the key lies above the query
        dx = k_yx[None, :, 1] - q_yx[:, None, 1]  # (Q, K): columns the key lies right of the query
        qk, kk = q_kind[:, None], k_kind[None, :]
        image = (qk == IMAGE) & (kk == IMAGE) & (dy >= 0) & (dy <= h) & (dx >= 1 - a) & (dx <= a + 1) \
            & ((dy > 0) | (dx <= 0))
        grid = (qk != GLOBAL) & (kk == GRID) & (dy.abs() <= h) & (dx.abs() <= a)
        glob = (qk != GRID) & (kk == GLOBAL)
        n_image = (h + 1) * width
        n_grid = (2 * h + 1) * width
        grid_index = n_image + (dy + h) * width + dx + a + torch.where(qk == GRID, n_grid, 0)
        last = n_image + (2 * n_grid if self.grid_condition else 0)
        index = torch.where(image, dy * width + dx + a - 1, torch.where(grid, grid_index, last))
        allowed = image | grid | glob
        return torch.where(allowed, index, last), allowed

    def bias(self, index: torch.Tensor, allowed: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Additive masks (L, nh, Q, K) for a `neighbourhood` result, or (nh, Q, K) of one layer."""
        tables = self.tables() if layer is None else self.tables()[layer]
        bias = tables[..., index]  # ([L,] nh, Q, K)
        return bias.masked_fill(~allowed, float("-inf")).to(self.tok_emb.weight.dtype)

    # ---- embeddings ---------------------------------------------------------------------------

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Condition tokens, (B, Hc, Wc) grid or (B, P) global -> inputs (B, Tc, C)."""
        if self.grid_condition:
            if cond.ndim != 3:
                raise VqtError(f"this local model reads a condition grid (B, H, W), got {tuple(cond.shape)}")
            return self.tok_emb(cond.flatten(1)) + self.cond_emb
        if cond.ndim != 2 or cond.shape[1] != self.n_prefix:
            raise VqtError(f"this local model reads {self.n_prefix} global condition tokens, got "
                           f"{tuple(cond.shape)}")
        return self.tok_emb(cond) + self.global_pos

    def embed_positions(self, tokens: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """Raster tokens (B, n) of a grid `width` wide -> inputs of positions (B, rows·(width + 1), C):
        (y, x) holds token (y, x - 1); (y, 0) and positions past the known tokens hold the row start."""
        B, n = tokens.shape
        padded = torch.zeros(B, rows * width, dtype=torch.long, device=tokens.device)
        padded[:, :n] = tokens
        emb = self.tok_emb(padded).view(B, rows, width, -1)  # (B, rows, width, C)
        known = (torch.arange(rows * width, device=tokens.device) < n).view(1, rows, width, 1)
        emb = torch.where(known, emb, self.row_start)
        start = self.row_start.expand(B, rows, 1, -1)
        return torch.cat([start, emb], dim=2).flatten(1, 2)  # (B, rows·(width + 1), C)

    # ---- dense forward (training, evaluation, reference) ----------------------------------------

    def run(self, x: torch.Tensor, index: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """All blocks over inputs x (B, T, C) under one neighbourhood mask (T, T) -> final states."""
        bias = self.bias(index, allowed)  # (L, nh, T, T)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.qkv(block.ln1(x))
            x = x + block.attn.mix(q, k, v, bias[layer][None])
            x = x + block.mlp(block.ln2(x))
        return x

    def grid_logits(self, cond: torch.Tensor, tokens: torch.Tensor, width: int) -> torch.Tensor:
        """Logits (B, n + 1, V) for the first n + 1 image tokens of a grid `width` wide, given its first
        n tokens (B, n) in raster order and the condition (a grid of the image's size, or global)."""
        n = tokens.shape[1]
        rows = n // width + 1
        c = self.embed_condition(cond)  # (B, Tc, C)
        x = torch.cat([c, self.embed_positions(tokens, rows, width)], dim=1)
        cond_yx, cond_kind = condition_layout(cond, self.grid_condition, c.device)
        pos_yx = grid_coords(rows, width + 1, c.device)
        yx = torch.cat([cond_yx, pos_yx])
        kind = torch.cat([cond_kind, torch.full((len(pos_yx),), IMAGE, device=c.device)])
        x = self.run(x, *self.neighbourhood(yx, kind, yx, kind))[:, c.shape[1]:]  # (B, rows·(width + 1), C)
        x = x.view(x.shape[0], rows, width + 1, -1)[:, :, :width].flatten(1, 2)[:, :n + 1]  # predicting positions
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """minGPT's training call: idx (B, P + w·w - 1) = cat(prefix, crop)[:, :-1] -> logits (B, P + w·w - 1, V),
        of which positions P - 1 on predict the crop's tokens."""
        B, T = idx.shape
        w, P = self.window, self.n_prefix
        if T != P + w * w - 1:
            raise VqtError(f"the local transformer reads {P} condition tokens and a {w}x{w} crop ({P + w * w - 1} "
                           f"tokens), got {T}")
        cond = idx[:, :P].reshape(B, w, w) if self.grid_condition else idx[:, :P]
        logits = self.grid_logits(cond, idx[:, P:], w)  # (B, w·w, V)
        return torch.cat([logits.new_zeros(B, P - 1, logits.shape[-1]), logits], dim=1)


def build_transformer(config: GPTConfig, window: int, grid_condition: bool) -> GPT | LocalGPT:
    """minGPT, or the local transformer when config.attention = "local"."""
    return LocalGPT(config, window, grid_condition) if config.attention == "local" else GPT(config)


def grid_coords(rows: int, cols: int, device: torch.device | str, top: int = 0) -> torch.Tensor:
    """(y, x) of a rows x cols grid from row `top`, raster order: (rows·cols, 2)."""
    return _grid_coords(rows, cols, top, str(device)).to(device)


@lru_cache(maxsize=64)
def _grid_coords(rows: int, cols: int, top: int, device: str) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(top, top + rows), torch.arange(cols), indexing="ij")
    return torch.stack([y.flatten(), x.flatten()], dim=1)


def condition_layout(cond: torch.Tensor, grid_condition: bool, device: torch.device,
                     top: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates and kinds of condition tokens: a grid's cells from row `top`, or global tokens."""
    if grid_condition:
        yx = grid_coords(cond.shape[1], cond.shape[2], device, top)
        return yx, torch.full((len(yx),), GRID, device=device)
    n = cond.shape[1]
    return torch.zeros(n, 2, dtype=torch.long, device=device), torch.full((n,), GLOBAL, device=device)
