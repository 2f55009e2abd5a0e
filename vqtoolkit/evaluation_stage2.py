"""Stage-2 figures on held-out data: bits per token, what the condition is worth, fidelity, a grid.

The *condition information gain* is the held-out bits per image token with a mismatched condition
(each item's condition given to the next item's image) minus the bits with the true condition: how
much of the image the model reads from its condition. Windows come from a fixed seed and batch size,
so two models over the same codes see the same windows and their figures compare.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data.recipe import WithCondition
from .data.tokens import fingerprint
from .errors import VqtError
from .images import to_uint8
from .models.transformer import GPT, image_loss
from .stage2 import Stage2Model
from .windows import Sequences, stack_items

WINDOW_SEED = 0
BATCH_SIZE = 16  # part of the window draw: keep it fixed so figures compare across runs


@torch.no_grad()
def held_out_tokens(model: Stage2Model, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every held-out item encoded once: code grids (N, H, W) and condition tokens, (N, h, w) grids or
    (N, L), or None for an unconditional model. Items may be images or token shards."""
    codes, conds = [], []
    for start in range(0, len(dataset), BATCH_SIZE):
        batch = stack_items([dataset[i] for i in range(start, min(start + BATCH_SIZE, len(dataset)))])
        if "codes" in batch:
            codes.append(batch["codes"].to(model.device))
            cond = batch["cond"].to(model.device) if "cond" in batch and model.condition else None
        else:
            codes.append(model.first_stage.encode(batch["image"].to(model.device)))
            cond = model.condition.tokens(batch["cond_raw"].to(model.device)) if model.condition else None
        if cond is not None:
            conds.append(cond)
    return torch.cat(codes), torch.cat(conds) if conds else None


@torch.no_grad()
def windows(model: Stage2Model, codes: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One window per item, drawn from WINDOW_SEED in batches of BATCH_SIZE: prefixes (N, P) and image
    tokens (N, w·w). Where the windows fall depends only on the code grids' shape, so every model over
    the same codes, and any condition tokens given with them, get the same windows."""
    sequences = Sequences(model, torch.Generator().manual_seed(WINDOW_SEED), train=False)
    prefixes, images = [], []
    for start in range(0, len(codes), BATCH_SIZE):
        batch = {"codes": codes[start:start + BATCH_SIZE]}
        if cond is not None:
            batch["cond"] = cond[start:start + BATCH_SIZE]
        prefix, image = sequences(batch, model.device)
        prefixes.append(prefix)
        images.append(image)
    return torch.cat(prefixes), torch.cat(images)


def held_out_windows(model: Stage2Model, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """One window per held-out item: prefixes (N, P) and image tokens (N, w·w)."""
    return windows(model, *held_out_tokens(model, dataset))


@torch.no_grad()
def bits_per_token(gpt: GPT, prefixes: torch.Tensor, images: torch.Tensor) -> float:
    """Teacher-forced bits per image token (the condition tokens are given, never predicted)."""
    was_training = gpt.training
    gpt.eval()
    total = 0.0
    for start in range(0, len(images), BATCH_SIZE):
        prefix, image = prefixes[start:start + BATCH_SIZE], images[start:start + BATCH_SIZE]
        logits = gpt(torch.cat([prefix, image], dim=1)[:, :-1])  # (B, P + N - 1, V)
        total += float(image_loss(logits.float(), image, prefix.shape[1])) * len(image)
    gpt.train(was_training)
    return total / len(images) / math.log(2)


def likelihood_figures(model: Stage2Model, dataset: Dataset, gpt: GPT | None = None) -> dict[str, float]:
    """Held-out bits per token and, for a conditional model, the condition information gain.

    The mismatched condition is the previous item's (item 0 gets the last's), cropped with *this*
    item's window: only the condition changes, not where the window lies, so a set whose conditions
    are all the same gains exactly 0."""
    gpt = model.gpt if gpt is None else gpt
    codes, cond = held_out_tokens(model, dataset)
    prefixes, images = windows(model, codes, cond)
    true = bits_per_token(gpt, prefixes, images)
    figures = {"bits_per_token": true}
    if cond is not None and len(images) > 1:
        rolled, same = windows(model, codes, cond.roll(1, dims=0))  # item i gets i-1's condition
        assert torch.equal(same, images), "the windows must not depend on the condition"
        mismatched = bits_per_token(gpt, rolled, images)
        figures.update(mismatched_bits_per_token=mismatched, gain_bits=mismatched - true,
                       gain_percent=100.0 * (mismatched - true) / mismatched if mismatched > 0 else 0.0)
    return figures


def check_baseline(model: Stage2Model, baseline: Stage2Model, where: str) -> None:
    """A baseline's bits compare with the model's only over the same codes and windows."""
    if fingerprint(baseline.first_stage.tensors()) != fingerprint(model.first_stage.tensors()):
        raise VqtError(f"--baseline {where} codes images with another stage-1 model; bits per token only "
                       "compare between models over the same codes")
    if baseline.window != model.window:
        raise VqtError(f"--baseline {where} has a {baseline.window}x{baseline.window} window, the model "
                       f"{model.window}x{model.window}; windows must match to compare bits")


def baseline_figures(model: Stage2Model, baseline: Stage2Model, dataset: Dataset,
                     bits: float, where: str) -> dict[str, float]:
    """The baseline model's bits on the same windows, and how far below them `model` is (`bits`).

    `dataset` holds the plain held-out items (no conditions): the baseline reads its own condition
    from them, which need not be the model's (e.g. an unconditional or an edge-conditioned baseline)."""
    check_baseline(model, baseline, where)
    if baseline.condition is not None:
        dataset = WithCondition(dataset, baseline.condition)
    base = bits_per_token(baseline.gpt, *held_out_windows(baseline, dataset))
    return {"baseline_bits_per_token": base, "below_baseline_percent": 100.0 * (base - bits) / base}


@torch.no_grad()
def sample_rows(model: Stage2Model, dataset: Dataset, n_items: int = 4, n_samples: int = 3,
                seed: int = 0) -> tuple[list[list[np.ndarray]], dict[str, float]]:
    """Rows of [condition | samples | ground truth] at the training window's size, and the mean
    fidelity of the samples to their conditions (empty unless the condition measures it)."""
    side = model.window * model.factor
    rows, scores = [], []
    for i in range(min(n_items, len(dataset))):
        item = dataset[i]
        truth = item["image"][..., :side, :side]
        raw = item["cond_raw"] if model.condition is not None else None
        if raw is not None and raw.ndim == 3:
            raw = raw[..., :side, :side]  # the window's own part of a spatial condition
        images, _ = model.sample(n_samples, (side, side), cond=raw, seed=seed + i)
        row = [to_uint8(x) for x in images] + [to_uint8(truth)]
        if raw is not None:
            row.insert(0, model.condition.render(raw))
            scores.append(model.condition.fidelity(images, raw))
        rows.append(row)
    fidelity = {k: float(np.mean([s[k] for s in scores])) for k in (scores[0] if scores else {})}
    return rows, fidelity
