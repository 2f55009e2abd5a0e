"""`--resume auto` through the CLI: a preempted job relaunched with the same command resumes when
the run folder holds training state and otherwise starts a new run; a plain `--resume` stays strict."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vqtoolkit.cli import cli
from vqtoolkit.cli.options import _resume_values

from .conftest import write
from .test_train_stage1 import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def vqt(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "rec_loss" in line]


@pytest.fixture
def recipe(tmp_path):
    return write(tmp_path / "tiny.toml", TINY)


def test_relaunching_the_same_command(recipe, tmp_path):
    run = tmp_path / "run"
    command = ("train-stage1", recipe, "--out", run, "--resume", "auto", "--set", "train.max_steps=2")
    code, output = vqt(*command)  # the first launch: nothing to resume
    assert code == 0, output
    assert f"--resume auto: {run} holds no training state; starting a new run" in output
    assert "finished at step 2" in output
    code, output = vqt(*command[:-1], "train.max_steps=4")  # relaunched (with more steps to go)
    assert code == 0, output
    assert f"--resume auto: resuming from {run / 'state.safetensors'}" in output and "finished at step 4" in output
    assert steps(run) == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_checkpoint_starts_over(recipe, tmp_path):
    """What such a run leaves: metrics, grids, maybe a bundle written just before its state."""
    run = tmp_path / "run"
    assert vqt("train-stage1", recipe, "--out", run, "--set", "train.max_steps=2")[0] == 0
    (run / "state.safetensors").unlink()
    code, output = vqt("train-stage1", recipe, "--out", run, "--resume")  # strict, as before
    assert code == 1 and "holds no training state (state.safetensors); start without --resume" in output
    code, output = vqt("train-stage1", "--resume", "auto", recipe, "--out", run)  # before RECIPE works too
    assert code == 0, output
    assert "holds no training state; starting a new run" in output and "finished at step 4" in output
    assert steps(run) == [1, 2, 3, 4]  # the old records are gone, not doubled


def test_auto_keeps_the_rules_of_resume(recipe, tmp_path):
    run = tmp_path / "run"
    assert vqt("train-stage1", recipe, "--out", run, "--set", "train.max_steps=2")[0] == 0
    code, output = vqt("train-stage1", recipe, "--out", run, "--resume", "auto", "--set", "model.ch=64")
    assert code == 1 and "recipe's [model] differs" in output
    code, output = vqt("train-stage1", recipe, "--out", run, "--resume", "auto", "--set", "train.max_steps=2")
    assert code == 0 and "finished at step 2" in output  # a finished run stays finished
    assert steps(run) == [1, 2]


def test_train_stage2_takes_resume_auto(tmp_path):
    recipe = write(tmp_path / "gpt.toml", '[transformer]\nfirst_stage = "missing.safetensors"\n')
    code, output = vqt("train-stage2", recipe, "--out", tmp_path / "run", "--resume", "auto")
    assert f"--resume auto: {tmp_path / 'run'} holds no training state; starting a new run" in output
    assert code == 1 and "missing.safetensors" in output  # then it went on as a new run would


def test_resume_values_are_read_up_to_a_double_dash():
    assert _resume_values(["--resume", "r.toml"]) == ["--resume=strict", "r.toml"]
    assert _resume_values(["r.toml", "--resume", "auto", "--force"]) == ["r.toml", "--resume=auto", "--force"]
    assert _resume_values(["r.toml", "--resume"]) == ["r.toml", "--resume=strict"]
    assert _resume_values(["--", "--resume"]) == ["--", "--resume"]
    code, output = vqt("train-stage1", "r.toml", "--resume", "later")
    assert code == 2 and "Got unexpected extra argument (later)" in output
