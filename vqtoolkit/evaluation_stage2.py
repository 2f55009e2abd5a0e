"""Stage-2 figures on held-out data: bits per token, what the condition is worth, fidelity, a grid.

The *condition information gain* is the held-out bits per image token with a mismatched condition
(each item's condition given to the next item's image) minus the bits with the true condition: how
much of the image the model reads from its condition. Windows come from a fixed seed and batch size,
so two models evaluated on the same data see the same windows and their figures compare.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data.tokens import fingerprint
from .errors import VqtError
from .images import to_uint8
from .models.transformer import GPT, image_loss
from .stage2 import Stage2Model
from .windows import Sequences, stack_items

WINDOW_SEED = 0
BATCH_SIZE = 16  # part of the window draw: keep it fixed so figures compare across runs


@torch.no_grad()
def held_out_windows(model: Stage2Model, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """One window per held-out item: prefixes (N, P) and image tokens (N, w·w)."""
    sequences = Sequences(model, torch.Generator().manual_seed(WINDOW_SEED), train=False)
    prefixes, images = [], []
    for start in range(0, len(dataset), BATCH_SIZE):
        batch = stack_items([dataset[i] for i in range(start, min(start + BATCH_SIZE, len(dataset)))])
        prefix, image = sequences(batch, model.device)
        prefixes.append(prefix)
        images.append(image)
    return torch.cat(prefixes), torch.cat(images)


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
    """Held-out bits per token and, for a conditional model, the condition information gain."""
    gpt = gpt or model.gpt
    prefixes, images = held_out_windows(model, dataset)
    true = bits_per_token(gpt, prefixes, images)
    figures = {"bits_per_token": true}
    if model.condition is not None and len(images) > 1:
        mismatched = bits_per_token(gpt, prefixes.roll(1, dims=0), images)  # (N, P): item i gets i-1's
        figures.update(mismatched_bits_per_token=mismatched, gain_bits=mismatched - true,
                       gain_percent=100.0 * (mismatched - true) / mismatched)
    return figures


def baseline_figures(model: Stage2Model, baseline: Stage2Model, dataset: Dataset,
                     bits: float, where: str) -> dict[str, float]:
    """The baseline model's bits on the same windows, and how far below them `model` is."""
    if fingerprint(baseline.first_stage.tensors()) != fingerprint(model.first_stage.tensors()):
        raise VqtError(f"--baseline {where} codes images with another stage-1 model; bits per token only "
                       "compare between models over the same codes")
    if baseline.window != model.window:
        raise VqtError(f"--baseline {where} has a {baseline.window}x{baseline.window} window, the model "
                       f"{model.window}x{model.window}; windows must match to compare bits")
    base = likelihood_figures(baseline, dataset)["bits_per_token"]
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
