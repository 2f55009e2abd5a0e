"""Loggers (train.loggers): TensorBoard read back with its own reader, bad names, a missing package,
a logger that raises, and resume dropping what was logged after the checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vqtoolkit.cli import cli
from vqtoolkit.recipes import load_recipe
from vqtoolkit.train import stage1

from .conftest import write
from .test_train_stage1 import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def train(recipe: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(out), "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result.output


def events(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator, tag: str) -> list[int]:
    return [e.step for e in accumulator.Scalars(tag)]


@pytest.fixture
def recipe(tmp_path):
    return write(tmp_path / "tiny.toml", TINY)


def test_tensorboard_gets_every_figure_and_the_grids(recipe, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    train(recipe, run, "--set", 'train.loggers=["jsonl", "tensorboard"]')
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    acc = events(run)
    tags = acc.Tags()
    for record in records:  # every figure of every record, at its step, with its value
        for key, value in record.items():
            if key != "step":
                match = [e for e in acc.Scalars(key) if e.step == record["step"]]
                assert len(match) == 1 and match[0].value == pytest.approx(value, rel=1e-6), key
    assert scalar_steps(acc, "rec_loss") == [1, 2, 3, 4] and scalar_steps(acc, "val_psnr") == [2, 4]
    assert tags["images"] == ["reconstructions"]
    images = acc.Images("reconstructions")
    assert [i.step for i in images] == [2, 4]
    from PIL import Image

    grid = Image.open(run / "samples" / "reconstructions_0000004.png")
    assert (images[-1].width, images[-1].height) == grid.size  # the grid written to samples/


def test_metrics_jsonl_is_the_default_logger_and_can_be_left_out(recipe, tmp_path):
    train(recipe, tmp_path / "none", "--set", "train.loggers=[]", "--set", "train.max_steps=2")
    assert not (tmp_path / "none" / "metrics.jsonl").exists() and not (tmp_path / "none" / "tensorboard").exists()
    assert load_recipe(recipe).train.loggers == ("jsonl",)


def test_an_unknown_logger_is_a_recipe_error_before_anything_runs(recipe, tmp_path):
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(tmp_path / "run"),
                                      "--set", 'train.loggers=["jsonl", "tensorbord"]'])
    assert result.exit_code == 1
    assert ("train.loggers names 'tensorbord', which is no logger; did you mean 'tensorboard'? "
            "(choose from jsonl, tensorboard; see 'vqt plugins')") in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--set", 'train.loggers=["jsonl", "jsonl"]'])
    assert result.exit_code == 1 and "train.loggers = ['jsonl', 'jsonl'] is invalid" in result.output


def test_tensorboard_without_its_package_stops_before_training(recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run),
                                      "--set", 'train.loggers=["jsonl", "tensorboard"]'])
    assert result.exit_code == 1
    assert ("logger 'tensorboard' could not start: the tensorboard package is not installed; "
            "pip install 'vqtoolkit[tensorboard]'") in result.output
    assert not (run / "state.safetensors").exists() and not (run / "metrics.jsonl").exists()


FLAKY = """
from vqtoolkit.hookspecs import hookimpl

calls = []


@hookimpl
def vqt_log_start(run):
    calls.append(("start", run.start_step))


@hookimpl
def vqt_log_metrics(run, step, record):
    calls.append(("metrics", step))
    if step == 2:
        raise OSError("disk full")


@hookimpl
def vqt_log_image(run, step, name, image):
    calls.append(("image", step, name, image.shape[2]))


@hookimpl
def vqt_log_end(run):
    calls.append(("end",))
"""


def test_a_logger_that_raises_is_reported_once_and_turned_off(recipe, tmp_path, install_plugin, caplog):
    module = install_plugin("flaky", FLAKY)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run),
                                      "--set", 'train.loggers=["flaky", "jsonl"]'])
    assert result.exit_code == 0, result.output  # training went on
    assert "finished at step 4" in result.output
    reason = "vqt_log_metrics failed at step 2: OSError: disk full"
    assert [r.getMessage() for r in caplog.records if "flaky" in r.getMessage()] == [
        f"logger flaky was turned off: {reason}"]  # a warning when it happens (on stderr in a terminal)
    assert result.output.count(f"logger flaky was turned off: {reason}") == 1  # and a line of the report
    assert sys.modules[module].calls == [("start", 0), ("metrics", 1), ("metrics", 2), ("end",)]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "rec_loss" in r] == [1, 2, 3, 4]  # the other logger kept logging


def test_loggers_end_when_training_fails(recipe, tmp_path, install_plugin):
    module = install_plugin("flaky", FLAKY)

    def progress(step, total, logs):
        if step == 2:
            raise RuntimeError("the node went away")

    with pytest.raises(RuntimeError, match="went away"):
        stage1.train_stage1(load_recipe(recipe, ['train.loggers=["flaky"]']), tmp_path / "run", progress=progress)
    assert sys.modules[module].calls == [("start", 0), ("metrics", 1), ("end",)]


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint(recipe, tmp_path):
    """Killed at step 3 after the checkpoint of step 2: step 3 is logged again, and read back once."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    cut = load_recipe(recipe, ['train.loggers=["jsonl", "tensorboard"]'])

    def progress(step, total, logs):
        if step == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        stage1.train_stage1(cut, run, progress=progress)
    assert scalar_steps(events(run), "rec_loss") == [1, 2, 3]
    train(recipe, run, "--resume", "--set", 'train.loggers=["jsonl", "tensorboard"]')
    acc = events(run)
    assert scalar_steps(acc, "rec_loss") == [1, 2, 3, 4] and [i.step for i in acc.Images("reconstructions")] == [2, 4]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "rec_loss" in r] == [1, 2, 3, 4]
