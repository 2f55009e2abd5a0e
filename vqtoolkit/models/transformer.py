"""Stage-2 GPT: a minGPT-compatible decoder with a preallocated KV cache.

Parameter names and initialisation follow taming-transformers' minGPT (`tok_emb`, `pos_emb`,
`blocks.{i}.ln1/ln2/attn.key/query/value/proj/mlp.0/mlp.2`, `ln_f`, `head`) so converted weights load
unchanged; only the `attn.mask` buffer is gone, because causality comes from
`F.scaled_dot_product_attention`.

Sequence convention for conditional models: condition tokens come first, then the image tokens in
raster order. The model reads ``cat(prefix, image)[:, :-1]`` and the logits from position
``n_prefix - 1`` on predict the image tokens; the loss covers only those (`image_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqtoolkit.errors import RecipeError, VqtError


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `max_len`.

    Preallocation keeps each sampling step free of concatenations; `reset` lets the sliding-window
    sampler reuse one buffer for every window placement.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.values = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def reset(self) -> None:
        """Forget all tokens (the buffers are kept)."""
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `k`, `v` (B, nh, T, hs) after the cached tokens; return all keys and values so far.

        `length` is advanced by the model once every layer has stored its entries.
        """
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]  # (B, nh, end, hs) each


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with minGPT's separate key/query/value projections."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.n_head = n_head
        self.attn_pdrop = attn_pdrop

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.attn_pdrop if self.training else 0.0
        if cache is None or cache.length == 0:
            # An empty cache computes exactly what the uncached forward computes (same tensors, same
            # kernel), so a cached prefix pass gives bit-identical logits.
            if cache is not None:
                cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs) each
            # SDPA's is_causal aligns the mask top-left, which is wrong once keys precede the
            # queries; new token t may see every cached key and the new ones up to itself.
            mask = None
            if T > 1:
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)  # (T, past+T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_drop(self.proj(y))


def feed_forward(n_embd: int, resid_pdrop: float) -> nn.Sequential:
    """minGPT's MLP (`mlp.0`, `mlp.2` in checkpoints); the local transformer's blocks use it too."""
    return nn.Sequential(
        nn.Linear(n_embd, 4 * n_embd),
        nn.GELU(),
        nn.Linear(4 * n_embd, n_embd),
        nn.Dropout(resid_pdrop),
    )


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, attn_pdrop, resid_pdrop)
        self.mlp = feed_forward(n_embd, resid_pdrop)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


@dataclass(frozen=True)
class GPTConfig:
    """Everything that rebuilds a GPT (stage-2 bundles store it). The recipe's [transformer] section
    holds the defaults; dropouts are off unless training turns them on."""

    vocab_size: int  # token ids: image codes, and condition codes sharing the same ids
    block_size: int  # longest sequence the model accepts (learned positions)
    n_layer: int  # transformer blocks
    n_head: int  # attention heads; must divide n_embd
    n_embd: int  # width of the residual stream
    embd_pdrop: float = 0.0  # dropout on token + position embeddings
    resid_pdrop: float = 0.0  # dropout on each block's attention and MLP outputs
    attn_pdrop: float = 0.0  # dropout on attention weights
    attention: str = "full"  # "full": this module's GPT; "local": models/local_transformer.py's LocalGPT
    neighbourhood: tuple[int, int] = (0, 0)  # local: (rows above, column span) each token attends to

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.attention not in ("full", "local"):
            raise ValueError(f"GPTConfig: attention={self.attention!r} must be 'full' or 'local'")


class GPT(nn.Module):
    """Decoder-only transformer over code indices with a context of `config.block_size` tokens."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.block_size = config.block_size
        self.n_layer = config.n_layer
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        n_embd = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.ModuleList(Block(n_embd, config.n_head, config.attn_pdrop, config.resid_pdrop)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # minGPT's init: N(0, 0.02) weights, zero biases, identity LayerNorms; pos_emb stays zero.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default block_size) tokens."""
        weight = self.tok_emb.weight
        return KVCache(
            self.n_layer,
            batch_size,
            self.n_head,
            self.block_size if max_len is None else max_len,
            self.n_embd // self.n_head,
            device=weight.device,
            dtype=weight.dtype,
        )

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token ids `idx` (B, T).

        With a `cache`, `idx` continues the cached sequence: its positions start at `cache.length`,
        attention also covers the cached keys, and the cache grows by T.
        """
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.block_size:
            raise VqtError(
                f"sequence of {start + T} tokens exceeds the transformer's block_size {self.block_size}"
            )
        if cache is not None and start + T > cache.max_len:
            raise VqtError(f"sequence of {start + T} tokens exceeds the KV cache's max_len {cache.max_len}")
        x = self.tok_emb(idx) + self.pos_emb[:, start : start + T]  # (B, T, C)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length = start + T
        return self.head(self.ln_f(x))  # (B, T, V)

    def configure_optimizer(
        self, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
    ) -> torch.optim.AdamW:
        """AdamW that decays only Linear weights (minGPT): biases, LayerNorms, embeddings and
        pos_emb are not regularised toward zero."""
        decay: dict[str, nn.Parameter] = {}
        no_decay: dict[str, nn.Parameter] = {}
        for module_name, module in self.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                if isinstance(module, nn.Linear) and param_name == "weight":
                    decay[full_name] = param
                else:
                    no_decay[full_name] = param
        all_names = {name for name, _ in self.named_parameters()}
        assert not decay.keys() & no_decay.keys(), f"in both groups: {decay.keys() & no_decay.keys()}"
        assert decay.keys() | no_decay.keys() == all_names, f"ungrouped: {all_names - decay.keys() - no_decay.keys()}"
        groups = [
            {"params": [decay[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [no_decay[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)  # one kernel for all tensors


def image_loss(logits: torch.Tensor, targets: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Cross-entropy on the image positions only.

    `logits` (B, P + N - 1, V) come from ``gpt(cat(prefix, inputs)[:, :-1])`` with `n_prefix` = P >= 1
    condition tokens; the logits at positions P-1 .. P+N-2 predict `targets` (B, N).
    """
    image_logits = logits[:, n_prefix - 1 :]  # (B, N, V)
    if image_logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} with {n_prefix} prefix tokens do not match targets {tuple(targets.shape)}"
        )
    return F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]), targets.reshape(-1))


def corrupt_tokens(
    tokens: torch.Tensor, pkeep: float, vocab_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each token by a uniformly random code with probability 1 - pkeep.

    Taming's Net2NetTransformer does this to the image *inputs* during training (targets stay
    clean) so the model learns to cope with its own sampling mistakes.
    """
    if not 0.0 <= pkeep <= 1.0:
        raise RecipeError(f"transformer.pkeep={pkeep} must lie in [0, 1]")
    if pkeep == 1.0:
        return tokens
    keep = torch.rand(tokens.shape, generator=generator, device=tokens.device) < pkeep  # (B, N)
    noise = torch.randint(vocab_size, tokens.shape, generator=generator, device=tokens.device)  # (B, N)
    return torch.where(keep, tokens, noise)
