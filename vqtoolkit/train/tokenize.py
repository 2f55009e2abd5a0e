"""`vqt tokenize`: encode a recipe's images (and conditions) once into token shards for stage 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..condition_options import NO_CONDITION, complete_recipe
from ..data.recipe import WithCondition, training_dataset
from ..data.tokens import fingerprint, tokenize
from ..errors import VqtError
from ..recipes import Recipe
from ..schema import option_values
from ..source_options import data_source
from ..stage1 import Stage1Model
from ..condition_spec import ConditionSpec, check_condition_grid


def tokenize_recipe(recipe: Recipe, out: str | Path, *, model_path: str = "", device: str = "cpu",
                    batch_size: int = 16, progress_factory: Callable[[int], Callable[[int], None]] | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Encode the recipe's data with its stage 1 (and condition stage) into shards under `out`."""
    recipe = complete_recipe(recipe)
    path = model_path or recipe.transformer.first_stage
    if not path:
        raise VqtError("name the stage-1 bundle with --model or transformer.first_stage in the recipe")
    first = Stage1Model.load(path, device)
    spec = ConditionSpec.from_config(recipe.condition, recipe.path or "recipe", device)
    dataset = training_dataset(recipe, first.model_config.in_channels, augment=False)
    if spec is not None:
        dataset = WithCondition(dataset, spec)
        grid = recipe.data.size // first.factor
        check_condition_grid(spec, dataset[0]["cond_raw"].to(device), (grid, grid), recipe.path or "recipe")
    _, options = data_source(recipe.data)
    identity: dict[str, Any] = {
        "first_stage": {"path": str(path), "fingerprint": fingerprint(first.tensors())},
        "condition": spec.meta() if spec else NO_CONDITION,
        "data": {"source": recipe.data.source, "size": recipe.data.size, **option_values(options)},
        "grid": [recipe.data.size // first.factor] * 2,
    }
    if spec is not None and spec.stage is not None:
        identity["cond_stage"] = {"path": recipe.condition.stage, "fingerprint": fingerprint(spec.stage.tensors())}

    def encode(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out_ = {"codes": first.encode(batch["image"].to(first.device))}
        if spec is not None:
            out_["cond"] = spec.tokens(batch["cond_raw"].to(first.device))
        return out_

    progress = progress_factory(len(dataset)) if progress_factory else None
    return tokenize(dataset, out, encode=encode, identity=identity, batch_size=batch_size,
                    num_workers=recipe.data.num_workers, progress=progress, force=force)
