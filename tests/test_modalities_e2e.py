"""Every built-in modality end to end through the CLI, tiny: condition VQGAN, stage 2, sampling.

One image VQGAN (f = 8 by override, 32-pixel crops: 4x4 code grids) is trained for the module. For each
modality the quick-start recipes train its condition stage (when it has one) and a one-layer
transformer for a few steps; `vqt sample` then draws 64x48 images (8x6 codes) from a condition
file, which needs the 4x4 window to slide. Quality is not the point: shapes, files and the
condition pictures in the grids are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.cli import cli
from vqtoolkit.plugins import get_condition
from vqtoolkit.data.recipe import WithCondition, held_out_dataset
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.recipes import load_recipe
from vqtoolkit_plugins.synthetic.render import render_scene

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SIZE = 32  # training scenes: 4x4 codes at f = 8, the transformer's window
SAMPLE_W, SAMPLE_H = 64, 48  # 8x6 codes: larger than the window and not square

TINY = [  # a ~0.4M-parameter f = 8 VQGAN (channels_last is slower on CPU), no GAN
    "data.size=32", "data.n=16", "data.val_n=2", "data.num_workers=0", "model.ch=32", "model.ch_mult=[1,1,1,1]",
    "model.z_channels=16", "quantizer.embed_dim=16", "quantizer.n_codes=32", "loss.disc_start=1000",
    "train.channels_last=false", "train.batch_size=4", "train.checkpoint_every=1000", "train.sample_every=1000",
    "train.log_every=1000"]
TINY_GPT = ["data.size=32", "data.n=16", "data.tokens=''", "data.val_n=2", "data.num_workers=0", "sample.n=2",
            "transformer.n_layer=1", "transformer.n_head=2", "transformer.n_embd=32", "transformer.window=4",
            "train.batch_size=4", "train.max_steps=3", "train.checkpoint_every=1000",
            "train.sample_every=1000", "train.log_every=1000"]
EXTRA = {"coordinates": ["condition.n_codes=32", "condition.down_factor=8"]}  # down_factor = this image VQGAN's f


def vqt(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, f"vqt {' '.join(args)}\n{result.output}\n{result.exception!r}"
    return result.output


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


@pytest.fixture(scope="module")
def image_vqgan(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vq") / "run"
    vqt("train-stage1", str(RECIPES / "quickstart.toml"), "--out", str(out), "--device", "cpu",
        *sets(TINY + ["train.max_steps=20"]))
    return out / "last.safetensors"


def cond_input(name: str, folder: Path) -> list[str]:
    """Write a condition file of the sample size for `name`; the `vqt sample` arguments that pass it."""
    scene = render_scene(5, (SAMPLE_H, SAMPLE_W))
    path = folder / {"segmentation": "labels.png", "depth": "depth.npy", "edge": "photo.png",
                     "pose": "pose.json", "superres": "small.png"}.get(name, "")
    if name == "segmentation":
        Image.fromarray(scene.segmentation.astype(np.uint8), "L").save(path)
    elif name == "depth":
        np.save(path, scene.depth)
    elif name == "edge":  # a colour photo: its Canny edges are the condition
        Image.fromarray(scene.image).save(path)
    elif name == "pose":
        path.write_text(json.dumps({"keypoints": scene.pose.ravel().tolist()}))
    elif name == "superres":
        Image.fromarray(scene.image).resize((SAMPLE_W // 8, SAMPLE_H // 8), Image.Resampling.BICUBIC).save(path)
    elif name == "class":
        return ["--class", "1"]
    else:
        return ["--cond", "full"]
    return ["--cond", str(path)]


def top_left(grid: np.ndarray, picture: np.ndarray) -> np.ndarray:
    """The first cell of an image_grid (2-pixel padding), cut to `picture`'s size."""
    return grid[2:2 + picture.shape[0], 2:2 + picture.shape[1]]


@pytest.mark.parametrize("name", ["segmentation", "depth", "edge", "pose", "superres", "class", "coordinates"])
def test_modality_trains_and_samples(name, image_vqgan, tmp_path):
    condition = get_condition(name)
    extra = EXTRA.get(name, [])
    stage_sets = []
    if condition.has_stage:
        stage = tmp_path / "stage"
        vqt("train-stage1", str(RECIPES / f"quickstart-{name}-stage.toml"), "--out", str(stage),
            "--device", "cpu", *sets(TINY + extra + ["train.max_steps=2"]))
        assert list((stage / "samples").glob("reconstructions_*.png"))
        stage_sets = [f"condition.stage={stage / 'last.safetensors'}"]

    run = tmp_path / "stage2"
    vqt("train-stage2", str(RECIPES / f"quickstart-{name}.toml"), "--out", str(run), "--device", "cpu",
        *sets(TINY_GPT + extra + stage_sets + [f"transformer.first_stage={image_vqgan}"]))

    # The training grid shows each held-out condition beside its sample.
    recipe = load_recipe(RECIPES / f"quickstart-{name}.toml", TINY_GPT + extra)
    options = condition.parse_options(recipe.condition.options, "test")
    val = WithCondition(held_out_dataset(recipe, 3), ConditionSpec(condition, options, None))  # the recipe's crops
    expected = condition.render(val[0]["cond_raw"], options)
    grid = np.asarray(Image.open(sorted((run / "samples").glob("samples_*.png"))[-1]))
    np.testing.assert_array_equal(top_left(grid, expected), expected)

    out = tmp_path / "out"
    vqt("sample", "--model", str(run / "last.safetensors"), *cond_input(name, tmp_path),
        "--size", f"{SAMPLE_W}x{SAMPLE_H}", "--n", "2", "-o", str(out), "--device", "cpu")
    for i in range(2):
        assert Image.open(out / f"sample_{i:04d}.png").size == (SAMPLE_W, SAMPLE_H)
    if condition.kind != "global":  # grid.png: the condition's picture, then the samples
        args = cond_input(name, tmp_path)
        picture = condition.render(condition.read(args[1], (SAMPLE_H, SAMPLE_W), options), options)
        assert picture.shape == (SAMPLE_H, SAMPLE_W, 3)
        np.testing.assert_array_equal(top_left(np.asarray(Image.open(out / "grid.png")), picture), picture)
