"""Faults and bad input: killed runs resume, nothing partial is left, CLI values are checked."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vqtoolkit.checkpoint import load_bundle, load_train_state
from vqtoolkit.cli import cli
from vqtoolkit.cli.options import parse_size
from vqtoolkit.errors import VqtError

from .conftest import write
from .test_cli_stage1 import bundle, image  # noqa: F401  (fixture)
from .test_train_stage1 import TINY


@given(st.text(max_size=12))
def test_parse_size_never_crashes(text):
    try:
        h, w = parse_size(text)
    except VqtError as e:
        assert "--size" in str(e)
    else:
        assert h > 0 and w > 0


@given(st.integers(1, 5000), st.integers(1, 5000))
def test_parse_size_round_trip(w, h):
    assert parse_size(f"{w}x{h}") == (h, w)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_image_loader_rejects_garbage_cleanly(tmp_path_factory, data):
    from vqtoolkit.errors import ImageError
    from vqtoolkit.images import load_image

    path = tmp_path_factory.mktemp("garbage") / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(ImageError, match="x.png"):
        load_image(path)


def test_encode_leaves_no_partial_output(bundle, tmp_path):  # noqa: F811
    good = image(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(Image.open(good).tobytes()[:50])  # not a PNG at all
    out = tmp_path / "codes"
    result = CliRunner().invoke(cli, ["encode", good, str(bad), "--model", str(bundle), "-o", str(out)])
    assert result.exit_code == 1 and "b.png" in result.output and "Traceback" not in result.output
    assert not list(out.glob("*.npy"))  # a.npy was written, then removed


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "top_k"), (["--temperature", "-1"], "temperature"), (["--n", "0"], "--n must be"),
    (["--top-p", "1.5"], "top_p"),
])
def test_bad_sample_values(tmp_path, args, message):
    from vqtoolkit.api import Stage1Model
    from vqtoolkit.stage2 import Stage2Model
    from vqtoolkit.models.transformer import GPT, GPTConfig
    from vqtoolkit.recipes import ModelConfig, QuantizerConfig

    first = Stage1Model.build(ModelConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                          z_channels=4, resolution=16), QuantizerConfig(embed_dim=4, options={"n_codes": 8}))
    path = tmp_path / "m.safetensors"
    Stage2Model(first, GPT(GPTConfig(8, 1 + 16 - 1, 1, 1, 8)), 4, None).save(path)
    result = CliRunner().invoke(cli, ["sample", "--model", str(path), "--size", "8x8", "-o", str(tmp_path / "o"),
                                      *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_unwritable_output_folder(tmp_path):
    from vqtoolkit.checkpoint import save_bundle

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(VqtError, match="cannot write .*not-a-folder/m.safetensors"):
        save_bundle(blocker / "m.safetensors", {}, kind="stage1", config={})


def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Kill a real `vqt train-stage1` several times; each --resume continues and nothing is corrupt."""
    recipe = write(tmp_path / "tiny.toml", TINY + "\n")
    out = tmp_path / "run"
    steps = 10
    base = [sys.executable, "-m", "vqtoolkit.cli", "train-stage1", str(recipe), "--out", str(out),
            "--set", f"train.max_steps={steps}", "--set", "train.checkpoint_every=1",
            "--set", "train.sample_every=100"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(0)
    seen = []
    for attempt in range(4):
        args = base + (["--resume"] if (out / "state.safetensors").exists() else [])
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "state.safetensors").exists():
            state = load_train_state(out / "state.safetensors")  # never corrupt
            load_bundle(out / "last.safetensors")
            seen.append(int(state["step"]))
    assert seen == sorted(seen)  # progress is never lost
    final = subprocess.run(base + ["--resume"] if (out / "state.safetensors").exists() else base,
                           env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert int(load_train_state(out / "state.safetensors")["step"]) == steps
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "total_loss" in r] == list(range(1, steps + 1))
    assert not list(out.glob(".*.tmp"))  # no temp files left by the kills
