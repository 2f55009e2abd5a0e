"""Weights & Biases: every figure and sample grid of a run in a W&B run (offline: WANDB_MODE=offline).

Select it with `train.loggers = ["jsonl", "wandb"]`. The W&B run lives in <run folder>/wandb/ and
its id in <run folder>/wandb-run-id, so a resumed vqtoolkit run (`--resume`, `--resume auto`)
continues the same W&B run; W&B keeps the first value of a step logged twice, so the steps repeated
after a resume keep their first values. The W&B project is $WANDB_PROJECT, or "vqtoolkit".
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import wandb

from vqtoolkit import hookimpl
from vqtoolkit.recipes import recipe_to_dict

ID_FILE = "wandb-run-id"


@hookimpl
def vqt_log_start(run) -> None:
    id_file = run.path / ID_FILE
    resuming = run.start_step > 0 and id_file.is_file()
    run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    run.state["wandb"] = wandb.init(project=os.environ.get("WANDB_PROJECT", "vqtoolkit"), dir=str(run.path),
                                    name=run.path.name, id=run_id, resume="allow" if resuming else None,
                                    config=recipe_to_dict(run.recipe))


@hookimpl
def vqt_log_metrics(run, step: int, record: dict[str, float]) -> None:
    run.state["wandb"].log(record, step=step)


@hookimpl
def vqt_log_image(run, step: int, name: str, image: np.ndarray) -> None:
    run.state["wandb"].log({name: wandb.Image(image, caption=f"step {step}")}, step=step)


@hookimpl
def vqt_log_end(run) -> None:
    run.state["wandb"].finish()
