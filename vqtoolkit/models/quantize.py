"""Quantizers: map a feature map to a grid of code indices and back.

Every quantizer module (`QuantizerModule`) has the same interface, so the training loop never
branches on its kind:

    quantized, indices, loss, stats = quantizer(z)   # (B, D, h, w), (B, h, w) long, scalar, dict
    quantizer.indices_to_quantized(indices)          # == quantized, bit for bit in eval mode
    quantizer.set_step(step)                         # schedules (Gumbel temperature); no-op otherwise
    quantizer.n_codes, quantizer.embed_dim           # indices are 0..n_codes-1; D = embed_dim

`stats` holds `usage` (fraction of codes used in the last `usage_window` training batches) and
`perplexity` (exp(entropy) of the code frequencies in the current batch); `CodeUsage.observe` keeps both.

Bookkeeping (usage window, EMA statistics, dead-code restarts) changes only in training mode; under
torch.distributed it is all-reduced / broadcast there, so every rank keeps the same codebook. Eval mode
issues no collective ops, so it is safe to encode on one rank only.

Which quantizer a recipe gets is the plugin registry's business (`vqtoolkit.quantizers`); the built-in
kinds register in `builtin_quantizers.py`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import in_process_group, sum_over_ranks
from ..metrics import perplexity


class QuantizerModule(nn.Module):
    """The module every quantizer builds: subclass it, set `n_codes` and `embed_dim`, implement
    `forward` and `indices_to_quantized` (and `set_step` when something follows a schedule)."""

    n_codes: int  # indices run over 0..n_codes-1: the codes stage 2 models
    embed_dim: int  # channels D of the maps read and returned

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """z (B, D, h, w) -> (quantized (B, D, h, w), indices (B, h, w) long, loss (scalar), stats)."""
        raise NotImplementedError

    def indices_to_quantized(self, indices: Tensor) -> Tensor:
        """(B, h, w) long -> (B, D, h, w): what `forward` returns for these indices in eval mode."""
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Called before each training step; schedules (a temperature) follow it. Default: nothing."""


def _grid_lookup(codes: Tensor, indices: Tensor) -> Tensor:
    """Rows of `codes` (K, D) at `indices` (B, h, w) as a contiguous (B, D, h, w) map."""
    return codes[indices].permute(0, 3, 1, 2).contiguous()


class CodeUsage(nn.Module):
    """Per-code age in training batches since last use; saved, so a resumed run restarts codes on time.

    A code counts as used if it was picked in one of the last `window` batches; a code is dead once a
    full window has been observed and it was not picked in it.
    """

    def __init__(self, n_codes: int, window: int) -> None:
        super().__init__()
        self.window = window
        # Start "never seen": usage grows from 0 as codes are picked.
        self.register_buffer("age", torch.full((n_codes,), window, dtype=torch.long))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, counts: Tensor) -> None:  # counts (K,) of this batch (all ranks summed)
        self.age.copy_(torch.where(counts > 0, torch.zeros_like(self.age), self.age + 1))
        self.batches += 1

    def usage(self) -> Tensor:
        return (self.age < self.window).float().mean()

    def dead(self) -> Tensor:  # (K,) bool
        return (self.age >= self.window) & (self.batches >= self.window)

    def observe(self, indices: Tensor, training: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """Count this batch's codes (K,) and return them with the stats every quantizer reports. In
        training the counts are summed over ranks and advance the window; eval only reads it."""
        counts = torch.bincount(indices.flatten(), minlength=self.age.numel())
        if training:
            counts = sum_over_ranks(counts)
            self.update(counts)
        return counts, {"usage": self.usage(), "perplexity": perplexity(counts)}


class VectorQuantizer(QuantizerModule):
    """Nearest-neighbour vector quantizer with a straight-through gradient.

    Args:
        n_codes: codebook size K.
        embed_dim: channels D of the input and output maps.
        beta: commitment weight; loss = ||sg[z] - e||^2 + beta ||z - sg[e]||^2.
        legacy_beta: the reference code's placement, beta on the codebook term instead
            (||sg[z] - e||^2 beta + ||z - sg[e]||^2); needed to continue training imported weights as before.
        codebook_dim: if > 0, look up in a low-dimensional space: 1x1 `proj_in` to `codebook_dim`, look up,
            1x1 `proj_out` back (ViT-VQGAN / LlamaGen factorized codes, which keep codebooks in use).
        l2_normalize: compare l2-normalised inputs and codes (cosine similarity).
        ema: update codes as an exponential moving average of their assigned inputs instead of through the
            codebook loss term (the codebook then gets no gradient).
        ema_decay: decay of those averages.
        restart_dead: re-seed codes unused for `usage_window` training batches with random current inputs.
        usage_window: batches over which usage is counted (stats and restarts).

    Parameter names: `embedding.weight` (K, D or codebook_dim) as the reference; `proj_in`, `proj_out`.
    """

    def __init__(self, n_codes: int, embed_dim: int, beta: float = 0.25, legacy_beta: bool = False,
                 codebook_dim: int = 0, l2_normalize: bool = False, ema: bool = False,
                 ema_decay: float = 0.99, restart_dead: bool = False, usage_window: int = 100) -> None:
        super().__init__()
        self.n_codes = n_codes
        self.embed_dim = embed_dim
        self.beta = beta
        self.legacy_beta = legacy_beta
        self.l2_normalize = l2_normalize
        self.ema = ema
        self.ema_decay = ema_decay
        self.restart_dead = restart_dead
        lookup_dim = codebook_dim if codebook_dim > 0 else embed_dim
        self.proj_in = nn.Conv2d(embed_dim, codebook_dim, 1) if codebook_dim > 0 else None
        self.proj_out = nn.Conv2d(codebook_dim, embed_dim, 1) if codebook_dim > 0 else None
        self.embedding = nn.Embedding(n_codes, lookup_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_codes, 1.0 / n_codes)  # reference init
        if ema:
            self.embedding.weight.requires_grad_(False)
            # Start from count 1 per code (not 0, as the reference) so that codes unused so far keep
            # their value instead of being divided by ~eps.
            self.register_buffer("ema_count", torch.ones(n_codes))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        self.usage_tracker = CodeUsage(n_codes, usage_window)

    def _codebook(self) -> Tensor:  # (K, d) in fp32, normalised when comparing directions
        codes = self.embedding.weight.float()
        return F.normalize(codes, dim=1) if self.l2_normalize else codes

    def _project(self, quantized: Tensor) -> Tensor:  # (B, d, h, w) -> (B, D, h, w)
        return self.proj_out(quantized) if self.proj_out is not None else quantized

    def indices_to_quantized(self, indices: Tensor) -> Tensor:  # (B, h, w) long -> (B, D, h, w)
        return self._project(_grid_lookup(self._codebook(), indices))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """z (B, D, h, w) -> (quantized (B, D, h, w), indices (B, h, w), loss, stats)."""
        z_e = self.proj_in(z) if self.proj_in is not None else z  # (B, d, h, w)
        # Distances and the loss in fp32 even under autocast: bf16 ties pick wrong codes.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_e = z_e.float()
            if self.l2_normalize:
                z_e = F.normalize(z_e, dim=1)
            b, d, h, w = z_e.shape
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (N, d), N = B*h*w
            if self.training and self.restart_dead:
                self._restart_dead_codes(flat.detach())
            codes = self._codebook()  # (K, d)
            dist2 = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (N, K)
            indices = dist2.argmin(dim=1).view(b, h, w)
            q = _grid_lookup(codes, indices)  # (B, d, h, w)

            commit = F.mse_loss(z_e, q.detach())
            codebook_w, commit_w = (self.beta, 1.0) if self.legacy_beta else (1.0, self.beta)
            loss = commit_w * commit
            if not self.ema:
                loss = loss + codebook_w * F.mse_loss(q, z_e.detach())
            # Straight-through: the value is exactly q (x - x == 0), the gradient reaches z_e unchanged.
            q_st = q + (z_e - z_e.detach()).contiguous()

        counts, stats = self.usage_tracker.observe(indices, self.training)  # (K,)
        if self.training and self.ema:
            self._ema_update(flat.detach(), indices.flatten(), counts)
        return self._project(q_st), indices, loss, stats

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """count_k <- decay count_k + (1-decay) n_k; sum_k likewise; code_k = sum_k / smoothed count_k."""
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)  # (K, d)
        sums = sum_over_ranks(sums)
        decay, eps = self.ema_decay, 1e-5
        self.ema_count.mul_(decay).add_(counts.to(self.ema_count), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + eps) / (total + self.n_codes * eps) * total  # Laplace smoothing
        self.embedding.weight.copy_(self.ema_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        """Replace dead codes by random inputs of this batch (rank 0's choice under torch.distributed).

        Runs before the lookup, so restarted codes are picked in the same batch.
        """
        dead = self.usage_tracker.dead()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        n = flat.shape[0]
        pick = torch.randperm(n, device=flat.device)[:n_dead] if n >= n_dead else \
            torch.randint(0, n, (n_dead,), device=flat.device)
        new = flat[pick].contiguous()  # (n_dead, d)
        if in_process_group():
            dist.broadcast(new, src=0)
        self.embedding.weight[dead] = new.to(self.embedding.weight.dtype)
        if self.ema:
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
        self.usage_tracker.age[dead] = 0


class GumbelQuantizer(QuantizerModule):
    """Gumbel-softmax quantizer, as the reference `GumbelQuantize` (params `proj`, `embed`).

    `proj` (1x1 conv, embed_dim -> n_codes) gives logits; training samples a hard one-hot with Gumbel
    noise at the current temperature (straight-through gradient through the soft sample); eval takes
    the argmax of the logits (deterministic, unlike the reference, so encoding a dataset is repeatable).
    The quantized map is the chosen row of `embed.weight` (n_codes, embed_dim). The loss is
    `kl_weight` x KL(softmax(logits) || uniform).

    The reference declares `proj` with `z_channels` inputs but feeds it the output of
    `quant_conv` (embed_dim channels), so working models have embed_dim == z_channels; taking
    embed_dim here keeps the usual `quant_conv: z_channels -> embed_dim` and loads those weights as-is.

    The temperature follows a cosine from `temperature_start` to `temperature_end` over
    `temperature_anneal_steps` (the reference's temperature scheduler is a cosine too), via `set_step`.
    """

    def __init__(self, n_codes: int, embed_dim: int, kl_weight: float = 5e-4, temperature_start: float = 1.0,
                 temperature_end: float = 0.0625, temperature_anneal_steps: int = 150000,
                 usage_window: int = 100) -> None:
        super().__init__()
        self.n_codes = n_codes
        self.embed_dim = embed_dim
        self.kl_weight = kl_weight
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        self.temperature_anneal_steps = temperature_anneal_steps
        self.temperature = temperature_start
        self.proj = nn.Conv2d(embed_dim, n_codes, 1)
        self.embed = nn.Embedding(n_codes, embed_dim)
        self.usage_tracker = CodeUsage(n_codes, usage_window)

    def set_step(self, step: int) -> None:
        """Set the temperature for training step `step` (cosine annealing, then constant)."""
        t = 1.0 if self.temperature_anneal_steps <= 0 else min(step / self.temperature_anneal_steps, 1.0)
        start, end = self.temperature_start, self.temperature_end
        self.temperature = end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))

    def indices_to_quantized(self, indices: Tensor) -> Tensor:  # (B, h, w) long -> (B, D, h, w)
        return _grid_lookup(self.embed.weight, indices)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """z (B, D, h, w) -> (quantized (B, D, h, w), indices (B, h, w), loss, stats)."""
        logits = self.proj(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            logits = logits.float()  # (B, K, h, w)
            log_qy = F.log_softmax(logits, dim=1)
            # KL(q || uniform) = sum q log(q K), averaged over positions.
            loss = self.kl_weight * (log_qy.exp() * (log_qy + math.log(self.n_codes))).sum(1).mean()
            if self.training:
                gumbels = -torch.empty_like(logits).exponential_().log()
                soft = F.softmax((logits + gumbels) / self.temperature, dim=1)  # (B, K, h, w)
                indices = soft.argmax(dim=1)  # (B, h, w)
                # Straight-through: the value is the hard code; logits get the soft sample's gradient,
                # the codebook only the chosen rows' (as the reference's hard gumbel_softmax).
                soft_q = torch.einsum("bkhw,kd->bdhw", soft, self.embed.weight.detach().float())
                quantized = self.indices_to_quantized(indices) + (soft_q - soft_q.detach()).contiguous()
            else:
                indices = logits.argmax(dim=1)
                quantized = self.indices_to_quantized(indices)

        _, stats = self.usage_tracker.observe(indices, self.training)
        return quantized, indices, loss, {**stats, "temperature": torch.tensor(self.temperature)}
