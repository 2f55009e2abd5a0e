"""The paper's recipes train on the reference's layout as it is: parallel trees, taming's files.

Each run is the shipped recipe plus the paths of a tiny copy of the dataset (`--set data.images=...
--set data.paired.<condition>=...`) and a tiny model. COCO-Stuff then goes on to stage 2 and samples
from a stuffthingmaps PNG holding 255.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.checkpoint import load_bundle
from vqtoolkit.cli import cli

from .taming_files import ade20k_tree, coco_tree, drin_tree, sflckr_tree

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = ["data.size=16", "data.num_workers=0", "model.ch=32", "model.ch_mult=[1,2,2]", "model.num_res_blocks=1",
        "model.attn_resolutions=[]", "model.z_channels=16", "model.resolution=16", "quantizer.embed_dim=16",
        "quantizer.n_codes=32", "loss.perceptual_weight=0", "loss.disc_start=1000", "train.channels_last=false",
        "train.batch_size=2", "train.max_steps=2", "train.checkpoint_every=1000", "train.sample_every=1000",
        "train.log_every=1"]
TINY_GPT = ["data.size=16", "data.num_workers=0", "data.tokens=''", "sample.n=1", "transformer.n_layer=1",
            "transformer.n_head=2", "transformer.n_embd=32", "transformer.window=4", "train.batch_size=2",
            "train.max_steps=2", "train.checkpoint_every=1000", "train.sample_every=1000", "train.log_every=1"]


def vqt(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"vqt {' '.join(map(str, args))}\n{result.output}\n{result.exception!r}"
    return result.output


def train(command: str, recipe: str, out: Path, *values: str) -> Path:
    vqt(command, RECIPES / f"{recipe}.toml", "--out", out, "--device", "cpu",
        *[a for v in values for a in ("--set", v)])
    return out / "last.safetensors"


def steps(run: Path) -> int:
    return len((run.parent / "metrics.jsonl").read_text().splitlines())


def test_drin_depth_stage_trains_on_taming_depth_pngs(tmp_path):
    drin_tree(tmp_path / "data")
    trees = [f"data.images={tmp_path / 'data' / 'drin_images'}", f"data.paired.depth={tmp_path / 'data' / 'drin_depth'}"]
    run = train("train-stage1", "drin-depth-stage", tmp_path / "drin", *trees, *TINY)
    bundle = load_bundle(run)
    assert bundle.condition["name"] == "depth" and bundle.config["model"]["in_channels"] == 1
    assert steps(run) >= 2
    listed = train("train-stage1", "drin-depth-stage", tmp_path / "listed", *trees, *TINY,
                   f"data.list_file={tmp_path / 'data' / 'drin_examples.txt'}")
    resolved = (listed.parent / "recipe.toml").read_text()
    assert load_bundle(listed).condition["name"] == "depth" and "drin_examples.txt" in resolved
    assert f'paired = {{ depth = "{tmp_path / "data" / "drin_depth"}" }}' in resolved  # the resolved recipe keeps it


@pytest.mark.parametrize("recipe, tree, images, labels", [
    pytest.param("ade20k-segmentation-stage", ade20k_tree, "ade20k_root/images", "ade20k_root/annotations",
                 id="ade20k"),
    pytest.param("sflckr-segmentation-stage", sflckr_tree, "sflckr_images", "sflckr_segmentations", id="sflckr"),
])
def test_segmentation_stages_train_on_the_reference_trees(tmp_path, recipe, tree, images, labels):
    data = tmp_path / "data"
    tree(data)
    run = train("train-stage1", recipe, tmp_path / "run", f"data.images={data / images}",
                f"data.paired.segmentation={data / labels}", *TINY)
    assert load_bundle(run).condition["name"] == "segmentation" and steps(run) >= 2


def test_coco_stuff_trains_both_stages_and_samples_from_a_label_map_holding_255(tmp_path):
    data = tmp_path / "data"
    coco_tree(data)
    images, labels = data / "coco" / "train2017", data / "cocostuffthings" / "train2017"
    assert any((np.array(Image.open(p)) == 255).any() for p in labels.iterdir())
    trees = [f"data.images={images}", f"data.paired.segmentation={labels}"]
    stage = train("train-stage1", "coco-stuff-segmentation-stage", tmp_path / "stage", *trees, *TINY)
    assert load_bundle(stage).condition["options"]["unlabeled"] == 255
    first = train("train-stage1", "imagenet", tmp_path / "coco", f"data.root={images}", *TINY)
    gpt = train("train-stage2", "coco-stuff-segmentation", tmp_path / "gpt", *trees, *TINY_GPT,
                f"transformer.first_stage={first}", f"condition.stage={stage}")
    assert json.loads((gpt.parent / "metrics.jsonl").read_text().splitlines()[-1])["step"] >= 1
    assert list((gpt.parent / "samples").glob("samples_*.png"))  # no held-out set: training items' conditions

    label_map = labels / "000000000025.png"  # 32x24, with COCO's unlabeled 255
    vqt("sample", "--model", gpt, "--cond", label_map, "--size", "32x24", "--n", "2", "--device", "cpu",
        "-o", tmp_path / "samples")
    assert Image.open(tmp_path / "samples" / "sample_0001.png").size == (32, 24)
    assert (tmp_path / "samples" / "grid.png").is_file()
