"""Stage-1 training end to end on tiny models: files, resume, signals, non-finite losses."""

import json
import os
import re
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.checkpoint import load_bundle
from vqtoolkit.cli import cli
from vqtoolkit.errors import VqtError
from vqtoolkit.recipes import load_recipe
from vqtoolkit.train import stage1
from vqtoolkit.train import runtime
from vqtoolkit.train.loop import TrainingStopped

from .conftest import logged, write

TINY = """
[data]
source = "synthetic"
size = 16
n = 24
val_n = 4
num_workers = 0

[model]
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [8]
z_channels = 8
resolution = 16

[quantizer]
n_codes = 16
embed_dim = 8

[loss]
perceptual_weight = 0.0
disc_start = 2
disc_ndf = 8
disc_layers = 1

[train]
max_steps = 4
batch_size = 4
base_learning_rate = 1e-4
checkpoint_every = 2
sample_every = 2
log_every = 1
"""


@pytest.fixture
def recipe_path(tmp_path):
    return write(tmp_path / "tiny.toml", TINY)


def run_cli(*args):
    result = CliRunner().invoke(cli, list(args))
    return result


def test_train_writes_run_folder(recipe_path, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train-stage1", str(recipe_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "finished at step 4" in result.output and "held-out: psnr" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "last.safetensors", "metrics.jsonl",
                                                     "recipe.toml", "samples", "state.safetensors"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["reconstructions_0000002.png",
                                                                   "reconstructions_0000004.png"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "val_psnr" not in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert train[2]["disc_loss"] > 0 and train[0].get("disc_loss", 0) == 0  # GAN on from step 2
    assert "val_psnr" in records[-1]
    assert [r["step"] for r in records if "val_psnr" in r] == [2, 4]  # at every sample step, and the summary
    curves = np.asarray(Image.open(out / "curves.png"))
    assert curves.ndim == 3 and curves.shape[0] >= 170 and curves.shape[1] >= 300  # at least one panel
    model = Stage1Model.load(out / "last.safetensors")
    assert model.factor == 2 and model.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 8, 8)
    assert load_recipe(out / "recipe.toml").model == load_recipe(recipe_path).model


def test_existing_run_needs_resume_or_force(recipe_path, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train-stage1", str(recipe_path), "--out", str(out), "--set", "train.max_steps=2").exit_code == 0
    result = run_cli("train-stage1", str(recipe_path), "--out", str(out))
    assert result.exit_code == 1 and "already holds a run; pass --resume" in result.output
    result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "new"), "--resume")
    assert result.exit_code == 1 and "holds no training state" in result.output
    changed = run_cli("train-stage1", str(recipe_path), "--out", str(out), "--resume", "--set", "model.ch=64")
    assert changed.exit_code == 1 and "recipe's [model] differs" in changed.output


def test_compiled_training_matches_eager(recipe_path, tmp_path, fast_compile):
    assert run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "eager")).exit_code == 0
    result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "compiled"),
                     "--set", "train.compile=true")
    assert result.exit_code == 0, result.output
    assert len(fast_compile) == 2  # the encoder, and the decoder up to its last layer
    eager, compiled = (logged(tmp_path / name, "total_loss", "d_weight") for name in ("eager", "compiled"))
    assert len(eager) == 4 and eager[-1][2] > 0  # the adaptive weight is in play after disc_start
    assert sum(compiled, ()) == pytest.approx(sum(eager, ()), rel=1e-4)
    a, b = load_bundle(tmp_path / "eager" / "last.safetensors"), load_bundle(tmp_path / "compiled" / "last.safetensors")
    assert a.tensors.keys() == b.tensors.keys()  # compiling in place keeps parameter names


def test_memory_layout_does_not_change_training(recipe_path, tmp_path):
    # on CPU, channels_last applies to the discriminator (and LPIPS) only: the VQGAN stays channels-first
    assert stage1._memory_formats(True, torch.device("cpu")) == (torch.channels_last, torch.contiguous_format)
    assert stage1._memory_formats(True, torch.device("cuda")) == (torch.channels_last, torch.channels_last)
    for layout in ("true", "false"):
        result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / layout),
                         "--set", f"train.channels_last={layout}")
        assert result.exit_code == 0, result.output
    first, second = (logged(tmp_path / layout, "total_loss", "d_weight", "disc_loss") for layout in ("true", "false"))
    assert sum(first, ()) == pytest.approx(sum(second, ()), rel=1e-4)
    a, b = (load_bundle(tmp_path / layout / "last.safetensors") for layout in ("true", "false"))
    for k in a.tensors:  # Adam turns float noise in near-zero gradients into up to one step (lr 4e-4)
        torch.testing.assert_close(a.tensors[k], b.tensors[k], rtol=1e-4, atol=4e-4)


def test_bf16_autocast_on_cpu(recipe_path, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)  # without it, bf16 is emulated: same numbers
    for precision in ("fp32", "bf16"):
        result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / precision),
                         "--set", f"train.precision={precision}")
        assert result.exit_code == 0, result.output
    fp32, bf16 = (logged(tmp_path / p, "total_loss", "usage") for p in ("fp32", "bf16"))
    assert sum(bf16, ()) == pytest.approx(sum(fp32, ()), rel=0.05)  # bf16 rounding, same training


def test_keep_freed_memory_is_safe_anywhere(monkeypatch):
    runtime.keep_freed_memory()  # glibc here: sets two malloc parameters
    monkeypatch.setattr(runtime.sys, "platform", "win32")
    monkeypatch.setattr(runtime.ctypes, "CDLL", None)  # never reached off Linux
    runtime.keep_freed_memory()


def test_bf16_on_a_cpu_without_it_is_a_clean_error(recipe_path, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "run"), "--device", "cpu",
                     "--set", "train.precision=bf16")
    assert result.exit_code == 1
    assert "needs native bf16 arithmetic (AVX512-BF16 or AMX), which this CPU lacks" in result.output


def test_resume_is_exact(recipe_path, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("train-stage1", str(recipe_path), "--out", str(straight)).exit_code == 0
    assert run_cli("train-stage1", str(recipe_path), "--out", str(split), "--set", "train.max_steps=3").exit_code == 0
    result = run_cli("train-stage1", str(recipe_path), "--out", str(split), "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_bundle(straight / "last.safetensors"), load_bundle(split / "last.safetensors")
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "total_loss" in r] == [1, 2, 3, 4]  # none lost or repeated


OLD_DATA = """[data]
source = "synthetic"
root = ""
images = ""
paired = {}
list_file = ""
val_root = ""
val_images = ""
val_paired = {}
size = 16
crop = "resize"
scale = 1.0
scene_size = []
scene_scale = []
world = "random"
n = 24
val_n = 4
num_workers = 0
strict = false
tokens = ""
"""


def test_a_run_folder_from_before_sources_declared_their_keys_resumes_exactly(recipe_path, tmp_path):
    """The recipe.toml of a run written when [data] held every source's keys resumes it, step for step."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("train-stage1", str(recipe_path), "--out", str(straight)).exit_code == 0
    assert run_cli("train-stage1", str(recipe_path), "--out", str(split), "--set", "train.max_steps=3").exit_code == 0
    stored = (split / "recipe.toml").read_text()
    old = re.sub(r"\[data\]\n.*?\n\n", OLD_DATA + "\n", stored, count=1, flags=re.S)  # as the old version wrote it
    assert "val_paired = {}" in old and "[model]" in old
    (split / "recipe.toml").write_text(old)
    result = run_cli("train-stage1", str(split / "recipe.toml"), "--out", str(split), "--resume",
                     "--set", "train.max_steps=4")
    assert result.exit_code == 0, result.output
    a, b = load_bundle(straight / "last.safetensors"), load_bundle(split / "last.safetensors")
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_sigterm_checkpoints_and_stops(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path, ["train.checkpoint_every=100"])

    def progress(step, total, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingStopped, match="stopped by SIGTERM at step 3; checkpoint saved"):
        stage1.train_stage1(recipe, tmp_path / "run", progress=progress)
    state = load_bundle(tmp_path / "run" / "last.safetensors")
    assert state.kind == "stage1"
    summary = stage1.train_stage1(recipe, tmp_path / "run", resume=True)
    assert summary["step"] == 4


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss(recipe_path, tmp_path, monkeypatch, policy):
    recipe = load_recipe(recipe_path, [f"train.on_nan='{policy}'"])
    original = stage1.VQLoss.generator_loss

    def poisoned(self, inputs, recon, qloss, last_layer, step, *args):
        loss, logs = original(self, inputs, recon, qloss, last_layer, step, *args)
        return (loss * float("nan") if step == 2 else loss), logs

    monkeypatch.setattr(stage1.VQLoss, "generator_loss", poisoned)
    if policy == "stop":
        with pytest.raises(VqtError, match=r"non-finite at step 2; stopped without saving, so the last good "
                                           r"checkpoint \(step 2\) is intact"):
            stage1.train_stage1(recipe, tmp_path / "run")
    else:
        before = load_bundle  # the run continues past the bad step
        assert stage1.train_stage1(recipe, tmp_path / "run")["step"] == 4
        assert before(tmp_path / "run" / "last.safetensors").kind == "stage1"


def test_trains_on_an_image_folder(recipe_path, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "run"),
                     "--set", "data.source='folder'", "--set", f"data.root='{tmp_path / 'images'}'",
                     "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output


def test_bad_data_and_device_are_clean_errors(recipe_path, tmp_path):
    missing = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "a"),
                      "--set", "data.source='folder'", "--set", f"data.root='{tmp_path / 'nope'}'")
    assert missing.exit_code == 1 and "is not a folder" in missing.output
    odd = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "b"), "--set", "data.size=15")
    assert odd.exit_code == 1 and "not a multiple of the model's factor f = 2" in odd.output
    if not torch.cuda.is_available():
        cuda = run_cli("train-stage1", str(recipe_path), "--out", str(tmp_path / "c"), "--device", "cuda")
        assert cuda.exit_code == 1 and "no CUDA device is available" in cuda.output


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (runtime.resolve_device("auto"), runtime.resolve_device("cpu")) == ("cpu", "cpu")
    with pytest.raises(VqtError, match="--device cuda, but no CUDA device is available; use --device cpu or auto"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (runtime.resolve_device("auto"), runtime.resolve_device("cuda")) == ("cuda", "cuda")


def test_unreadable_images_are_counted_or_stop_with_strict(recipe_path, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "6.png").write_bytes(b"not a png")
    (folder / "7.jpg").write_bytes((folder / "0.png").read_bytes()[:40])  # truncated
    args = ["train-stage1", str(recipe_path), "--set", "data.source='folder'", "--set", f"data.root='{folder}'",
            "--set", "train.max_steps=2"]
    result = run_cli(*args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable image(s)" in result.output
    strict = run_cli(*args, "--out", str(tmp_path / "strict"), "--strict")
    assert strict.exit_code == 1 and ("6.png" in strict.output or "7.jpg" in strict.output)
    assert "Traceback" not in strict.output


def test_lr_warmup_then_cosine_is_logged(recipe_path, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train-stage1", str(recipe_path), "--out", str(out), "--set", "train.warmup_steps=2",
                     "--set", "train.lr_schedule='cosine'")
    assert result.exit_code == 0, result.output
    peak = 1e-4 * 4  # base_learning_rate x batch_size
    # steps 0, 1 warm up (1/2, 2/2); then the cosine over the 2 remaining steps: cos(0), cos(pi/2)
    assert [lr for _, lr in logged(out, "lr")] == pytest.approx([peak / 2, peak, peak, peak / 2])


def test_resume_is_exact_with_a_schedule_and_lecam(recipe_path, tmp_path):
    settings = ["--set", "train.warmup_steps=2", "--set", "train.lr_schedule='cosine'",
                "--set", "loss.lecam_weight=0.5", "--set", "loss.l2_weight=1.0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("train-stage1", str(recipe_path), "--out", str(straight), *settings).exit_code == 0
    assert run_cli("train-stage1", str(recipe_path), "--out", str(split), *settings,
                   "--set", "train.max_steps=3").exit_code == 0  # the GAN and LeCAM are on from step 2
    result = run_cli("train-stage1", str(recipe_path), "--out", str(split), *settings, "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_bundle(straight / "last.safetensors"), load_bundle(split / "last.safetensors")
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert logged(straight, "lecam_loss", "lr") == logged(split, "lecam_loss", "lr")
    assert len(logged(straight, "lecam_loss")) == 2
