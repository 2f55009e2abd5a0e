"""What a resumed run carries over besides weights: random states, optimizer layouts, the recipe check.

`--resume` must continue exactly where the checkpoint left off, so the pieces that are easy to get
subtly wrong (every RNG, the memory layout of restored optimizer moments, whether the recipe still
describes the same model) sit together here. ModelEMA is not here: it is a model the loop updates
after every step, part of the `Job` a stage hands the loop, and saved by the loop like any module.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..errors import VqtError
from ..condition_options import complete_table
from ..quantizer_options import quantizer_table, read_stored
from ..recipes import Recipe, recipe_to_dict
from .run_dir import RunDir


def rng_state() -> dict[str, Any]:
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, torch.tensor(py_words, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Lay restored optimizer state out like its parameter. The state file holds contiguous tensors;
    fused Adam walks a channels_last parameter and a contiguous moment buffer as flat memory, which
    would pair the wrong elements without any error."""
    for param, state in opt.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


def same_architecture(state: dict[str, Any], recipe: Recipe, run: RunDir, keys: tuple[str, ...]) -> None:
    """Refuse to resume a run with a recipe that changed what shapes its model.

    Each of `keys` is a whole recipe section ("model") or one key of one ("transformer.n_layer"), so a
    section that mixes architecture with training settings can name only the former.
    """
    now = recipe_to_dict(recipe)
    for key in keys:
        section, _, name = key.partition(".")
        before, after = state["recipe"].get(section), now[section]
        if section == "condition" and before:  # runs from before options were stored in full
            before = complete_table(before, f"the training state in {run.path}")
        if section == "quantizer" and before:  # runs from before each quantizer declared its options
            before = quantizer_table(read_stored(before, f"the training state in {run.path}"))
        if name:
            before, after = (before or {}).get(name), after[name]
        if before != after:
            raise VqtError(f"--resume: the recipe's [{section}] differs from the run in {run.path} "
                           f"(see {run.recipe}); resume with the same recipe or start a new --out")
