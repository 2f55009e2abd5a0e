"""Training windows: a batch of code grids (or images) and conditions -> (prefix, image tokens).

Stage 2 learns p(s_i | s_<i, c) on `window`² crops of each code grid, with the same crop of a
spatial condition's grid, so the model can later slide that window over larger images. Training and
evaluation cut their windows here, from an explicit generator, so held-out figures are reproducible.
"""

from __future__ import annotations

from typing import Any

import torch

from .stage2 import Stage2Model, crop_window


class Sequences:
    """Turns a batch into (prefix, image tokens) of one training window each."""

    def __init__(self, model: Stage2Model, generator: torch.Generator, train: bool = True) -> None:
        self.model, self.generator, self.train = model, generator, train

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if "codes" in batch:
            codes = batch["codes"].to(device)  # (B, H, W)
            cond = batch["cond"].to(device) if "cond" in batch else None
        else:
            codes = m.first_stage.encode(batch["image"].to(device))  # (B, H, W)
            cond = m.condition.tokens(batch["cond_raw"].to(device)) if m.condition else None
        if cond is not None and self.train:
            cond = m.condition.train_tokens(cond, self.generator)
        B, H, W = codes.shape
        w = m.window
        tops = torch.randint(H - w + 1, (B,), generator=self.generator).tolist()
        lefts = torch.randint(W - w + 1, (B,), generator=self.generator).tolist()
        image = torch.cat([crop_window(codes[b:b + 1], tops[b], lefts[b], w, w) for b in range(B)])  # (B, w·w)
        if cond is None:
            prefix = torch.full((B, 1), m.sos_token, dtype=torch.long, device=device)
        elif cond.ndim == 3:
            prefix = torch.cat([crop_window(cond[b:b + 1], tops[b], lefts[b], w, w) for b in range(B)])
        else:
            prefix = cond  # (B, L)
        return prefix, image


def stack_items(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Dataset items -> the batch `Sequences` reads (images or codes, with raw or tokenized conditions)."""
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "cond_raw", "codes", "cond") if k in items[0]}
