"""Stage 2 end to end on tiny models: tokenize, train (images or shards), sample at any size."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.checkpoint import load_bundle
from vqtoolkit.cli import cli
from vqtoolkit.stage2 import Stage2Model
from vqtoolkit.recipes import ModelConfig, QuantizerConfig

from .conftest import logged


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """A random tiny VQGAN with f = 4 (32 px images -> 8x8 codes)."""
    torch.manual_seed(0)
    model = Stage1Model.build(
        ModelConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=32),
        QuantizerConfig(embed_dim=8, options={"n_codes": 32}))
    path = tmp_path_factory.mktemp("first") / "vqgan.safetensors"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def trained(first_stage, tiny_stage2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage2")
    recipe = tiny_stage2(folder / "tiny2.toml", first_stage)
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder


def test_train_stage2_writes_bundle_and_samples(trained):
    run = trained / "run"
    assert (run / "samples" / "samples_0000003.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["bits_per_token"] == pytest.approx(records[0]["loss"] / np.log(2))
    assert "val_bits_per_token" in records[-1]
    model = Stage2Model.load(run / "last.safetensors")
    assert model.window == 4 and model.gpt.block_size == 1 + 16 and model.condition is None


def test_compiled_training_matches_eager(first_stage, tiny_stage2, tmp_path, fast_compile):
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    for name, extra in (("eager", []), ("compiled", ["--set", "train.compile=true"])):
        result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert len(fast_compile) == 1
    eager, compiled = (logged(tmp_path / name, "loss") for name in ("eager", "compiled"))
    assert len(eager) == 3 and sum(compiled, ()) == pytest.approx(sum(eager, ()), rel=1e-5)


def test_bf16_autocast_on_cpu(first_stage, tiny_stage2, tmp_path, monkeypatch):
    from vqtoolkit.train import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)  # without it, bf16 is emulated: same numbers
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    for precision in ("fp32", "bf16"):
        result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / precision),
                                          "--set", f"train.precision={precision}"])
        assert result.exit_code == 0, result.output
    fp32, bf16 = (logged(tmp_path / p, "loss") for p in ("fp32", "bf16"))
    assert sum(bf16, ()) == pytest.approx(sum(fp32, ()), rel=0.02)  # bf16 rounding, same training


def test_resume_refuses_a_new_architecture_but_takes_new_training_settings(first_stage, tiny_stage2, tmp_path):
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    out = tmp_path / "run"

    def train(*sets: str, resume: bool = True):
        args = ["train-stage2", str(recipe), "--out", str(out), *(["--resume"] if resume else [])]
        return CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)])

    assert train("train.max_steps=2", resume=False).exit_code == 0
    deeper = train("train.max_steps=3", "transformer.n_layer=2")
    assert deeper.exit_code == 1 and "the recipe's [transformer] differs from the run" in deeper.output
    resumed = train("train.max_steps=3", "transformer.warmup_steps=10", "transformer.cosine_schedule=true",
                    "transformer.pkeep=0.9", "transformer.weight_decay=0.1", "transformer.resid_pdrop=0.1")
    assert resumed.exit_code == 0, resumed.output
    # The new warmup steers the resumed step: lr = 1e-4 x batch 4 x factor(3), factor(3) = (3 + 1) / 10
    assert [lr for step, lr in logged(out, "lr") if step == 3] == [pytest.approx(4e-4 * 0.4)]


@pytest.mark.parametrize("size, grid", [("16x16", (4, 4)), ("44x24", (6, 11))])
def test_sample_any_size(trained, tmp_path, size, grid):
    out = tmp_path / "samples"
    args = ["sample", "--model", str(trained / "run" / "last.safetensors"), "--size", size, "--n", "2",
            "--seed", "3", "--codes", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    w, h = (int(v) for v in size.split("x"))
    for i in range(2):
        assert Image.open(out / f"sample_{i:04d}.png").size == (w, h)
    codes = np.load(out / "codes.npy")
    assert codes.shape == (2, *grid)
    again = tmp_path / "again"
    assert CliRunner().invoke(cli, args[:-1] + [str(again)]).exit_code == 0
    assert np.array_equal(np.load(again / "codes.npy"), codes)  # reproducible by seed
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "already exists; pass --force" in refused.output


@pytest.mark.parametrize("size, message", [
    ("1024x", "expected WIDTHxHEIGHT"), ("0x0", "must be positive"),
    ("18x16", "not a multiple of the model's factor 4: use width 16 or 20"),
    ("12x16", "smaller than the model's window of 16x16 pixels"),
])
def test_bad_sizes(trained, tmp_path, size, message):
    result = CliRunner().invoke(cli, ["sample", "--model", str(trained / "run" / "last.safetensors"),
                                      "--size", size, "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and message in result.output, result.output


def test_stage1_bundle_is_not_a_stage2_model(first_stage, tmp_path):
    result = CliRunner().invoke(cli, ["sample", "--model", str(first_stage), "--size", "16x16",
                                      "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "is a stage1 bundle; this command needs a stage-2" in result.output


def test_tokenize_then_train_on_shards(first_stage, tiny_stage2, tmp_path):
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    shards = tmp_path / "tokens"
    result = CliRunner().invoke(cli, ["tokenize", str(recipe), "--out", str(shards), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 16 and manifest["grid"] == [8, 8]
    assert manifest["data"] == {"source": "synthetic", "size": 32, "n": 16, "val_n": 2, "scene_size": [], "scene_scale": [],
                                "world": "random", "object_crops": 0.0}  # what the shards were cut from, every option in full
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / "run"),
                                      "--set", f"data.tokens='{shards}'"])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(cli, ["tokenize", str(recipe), "--out", str(shards)])
    assert again.exit_code == 1 and "already holds finished token shards" in again.output


def test_an_unconditional_model_trains_on_a_conditional_tasks_shards(first_stage, tiny_stage2, tmp_path):
    """The demo's baseline reads the image codes of the depth task's shards (the same crops); a
    conditional recipe still needs shards of its own condition."""
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    superres = ["--set", "condition.name=superres", "--set", f"condition.stage='{first_stage}'", "--set", "condition.factor=2"]
    shards = tmp_path / "tokens"
    assert CliRunner().invoke(cli, ["tokenize", str(recipe), "--out", str(shards), *superres]).exit_code == 0
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / "run"),
                                      "--set", f"data.tokens='{shards}'"])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "run" / "last.safetensors").condition["name"] == ""
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / "edge"),
                                      "--set", f"data.tokens='{shards}'", "--set", "condition.name=edge",
                                      "--set", f"condition.stage='{first_stage}'", "--set", "condition.channels=3"])
    assert result.exit_code == 1 and "carry condition 'superres' but the recipe's is 'edge'" in result.output


def test_shards_from_another_first_stage_are_refused(first_stage, tiny_stage2, tmp_path):
    recipe = tiny_stage2(tmp_path / "tiny2.toml", first_stage)
    shards = tmp_path / "tokens"
    assert CliRunner().invoke(cli, ["tokenize", str(recipe), "--out", str(shards)]).exit_code == 0
    other = Stage1Model.load(first_stage)
    with torch.no_grad():
        other.vqgan.decoder.conv_out.bias.add_(1.0)
    other.save(tmp_path / "other.safetensors")
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / "run"),
                                      "--set", f"data.tokens='{shards}'",
                                      "--set", f"transformer.first_stage='{tmp_path / 'other.safetensors'}'"])
    assert result.exit_code == 1 and "were made by another stage-1 model" in result.output


def test_interrupted_tokenize_resumes(tmp_path):
    from vqtoolkit.data import tokens

    data = [{"image": torch.full((1, 2, 2), float(i))} for i in range(10)]
    identity = {"first_stage": {"fingerprint": "abc"}}
    calls = {"n": 0, "die_at": 3}  # batches of 2 and shards of 4: the first shard is written, then it dies

    def encode(batch):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt
        return {"codes": batch["image"][:, 0].long()}

    def run():
        return tokens.tokenize(data, tmp_path / "t", encode=encode, identity=identity, batch_size=2,
                               shard_size=4, num_workers=0)

    with pytest.raises(KeyboardInterrupt):
        run()
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["count"] == 4 and not manifest["complete"]
    calls["die_at"] = -1
    assert run()["count"] == 10
    shards = tokens.TokenShards(tmp_path / "t")
    assert [int(shards[i]["codes"][0, 0]) for i in range(10)] == list(range(10))


def test_schedule_keys_of_both_names_give_one_schedule():
    import math

    from vqtoolkit.recipes import recipe_from_dict
    from vqtoolkit.train.stage2 import _schedule

    old = recipe_from_dict({"transformer": {"warmup_steps": 2, "cosine_schedule": True}, "train": {"max_steps": 6}})
    new = recipe_from_dict({"train": {"warmup_steps": 2, "lr_schedule": "cosine", "max_steps": 6}})
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [_schedule(old)(s) for s in range(6)] == pytest.approx(want)
    assert [_schedule(new)(s) for s in range(6)] == pytest.approx(want)
    constant = recipe_from_dict({"transformer": {"warmup_steps": 4}, "train": {"max_steps": 6}})
    assert [_schedule(constant)(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
