"""examples/vqt-wandb as a user installs it, run offline (WANDB_MODE=offline): listed as a logger by
`vqt plugins`, and a tiny training run's figures and grids land in an offline W&B run.

Skipped when the `wandb` package is not installed (it is not in vqtoolkit's dev extra: the example
needs it, vqtoolkit does not)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vqtoolkit.cli import cli

from .conftest import install_example, write
from .test_train_stage1 import TINY

pytest.importorskip("wandb")
pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vqt-wandb"


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "config",
                        "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    yield install_example(EXAMPLE, tmp_path / "site", monkeypatch)
    sys.modules.pop("vqt_wandb", None)


def written(path: Path, *keys: bytes, wait: float = 60.0) -> bool:
    """Whether W&B's run file holds every key: its service process may write after finish() returns."""
    deadline = time.monotonic() + wait
    while not all(key in path.read_bytes() for key in keys):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_wandb_is_listed_as_a_logger(wandb_offline):
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    entry = next(p for p in data["plugins"] if p["name"] == "wandb")
    assert entry["source"] == "vqt-wandb 0.1.0" and entry["error"] is None and entry["loggers"] == ["wandb"]
    assert data["loggers"]["wandb"]["plugin"] == "wandb"


def test_a_run_logs_offline_and_a_resume_continues_it(wandb_offline, tmp_path):
    recipe = write(tmp_path / "tiny.toml", TINY)
    run = tmp_path / "run"
    loggers = ["--set", 'train.loggers=["jsonl", "wandb"]']
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run), "--set", "train.max_steps=2",
                                      *loggers])
    assert result.exit_code == 0, result.output
    assert "turned off" not in result.output
    (offline,) = (run / "wandb").glob("offline-run-*")
    run_id = (run / "wandb-run-id").read_text().strip()
    assert offline.name.endswith(run_id)
    assert written(offline / f"run-{run_id}.wandb", b"rec_loss", b"val_psnr")  # both kinds of records
    assert [p.name.split("_")[1] for p in (offline / "files" / "media" / "images").iterdir()] == ["2"]
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run), "--resume", "auto", *loggers])
    assert result.exit_code == 0, result.output
    resumed = [p for p in (run / "wandb").glob("offline-run-*") if p != offline]
    assert len(resumed) == 1 and resumed[0].name.endswith(run_id)  # the same W&B run, continued
