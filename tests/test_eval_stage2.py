"""`vqt eval` for stage-2 bundles, specified on tiny models: fidelity measures, held-out bits and the
condition information gain (`vqtoolkit/evaluation_stage2.py`), and the command (`cli/evaluate.py`).

The models are random or trained for 3 steps: these tests pin down what the figures *are* (formulas,
windows, files, refusals), not how good a model gets (tests/test_outcomes_stage2.py does that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.cli import cli
from vqtoolkit.data.recipe import WithCondition, evaluation_dataset
from vqtoolkit.evaluation_stage2 import (BATCH_SIZE, baseline_figures, held_out_tokens, held_out_windows,
                                         likelihood_figures)
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.plugins import get_condition
from vqtoolkit.recipes import ModelConfig, QuantizerConfig
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.stage2 import Stage2Model
from vqtoolkit_plugins.edge import edge_f1
from vqtoolkit_plugins.synthetic.dataset import SyntheticScenes

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SIZE = 32  # scenes of 32 px: 8x8 codes at f = 4, so 4x4 windows have 25 positions to be drawn from
WINDOW = 4
TINY_GPT = ["data.size=32", "data.n=8", "data.tokens=''", "data.val_n=2", "data.num_workers=0", "sample.n=1",
            "transformer.n_layer=1", "transformer.n_head=2", "transformer.n_embd=32", f"transformer.window={WINDOW}",
            "train.batch_size=4", "train.max_steps=3", "train.checkpoint_every=1000", "train.sample_every=1000",
            "train.log_every=1000"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def vqt(*args: str):
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> str:
    """stdout of a successful command (progress bars go to stderr)."""
    result = vqt(*args)
    assert result.exit_code == 0, f"vqt {' '.join(args)}\n{result.output}\n{result.exception!r}"
    return result.stdout


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


# --------------------------------------------------------------------------------------------
# edge_f1 by hand-worked examples (16x16 maps, lines far from the border)


def blank() -> torch.Tensor:
    return torch.zeros(16, 16, dtype=torch.bool)


def row_line(row: int, base: torch.Tensor | None = None) -> torch.Tensor:
    out = blank() if base is None else base.clone()
    out[row, 2:14] = True
    return out


def test_edge_f1_identical_maps():
    assert edge_f1(row_line(5), row_line(5)) == 1.0


def test_edge_f1_one_pixel_shift_is_within_tolerance():
    assert edge_f1(row_line(6), row_line(5)) == 1.0
    diagonal = blank()
    diagonal[6, 3:15] = True  # one down and one right: within the 3x3 neighbourhood
    assert edge_f1(diagonal, row_line(5)) == 1.0


def test_edge_f1_three_pixel_shift_matches_nothing():
    assert edge_f1(row_line(8), row_line(5)) == 0.0
    assert edge_f1(row_line(7), row_line(5), tolerance=2) == 1.0  # the radius is the argument


def test_edge_f1_one_of_two_lines_found():
    # found: row 3 only; target: rows 3 and 12 -> precision 12/12 = 1, recall 12/24 = 1/2,
    # F1 = 2 * 1 * 0.5 / 1.5 = 2/3. Swapping the maps swaps precision and recall: the same F1.
    found, target = row_line(3), row_line(12, row_line(3))
    assert edge_f1(found, target) == pytest.approx(2 / 3)
    assert edge_f1(target, found) == pytest.approx(2 / 3)


def test_edge_f1_empty_maps():
    assert edge_f1(blank(), blank()) == 1.0  # nothing to find and nothing found
    assert edge_f1(blank(), row_line(5)) == 0.0  # nothing found
    assert edge_f1(row_line(5), blank()) == 0.0  # edges where there are none


def test_edge_fidelity_of_the_image_itself_is_one():
    condition = get_condition("edge")
    options = condition.parse_options({}, "test")
    image = SyntheticScenes(2, 64, seed=3, train=False)[1]["image"]
    raw = condition.from_item({"image": image}, options)
    assert raw.gt(0).any()  # the scene has edges
    flat = torch.zeros(1, 3, 64, 64)
    scores = [condition.fidelity(x, raw, options)["edge_f1"] for x in (image[None], flat)]
    assert scores == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# superres fidelity


def test_superres_fidelity_separates_the_truth_from_noise():
    condition = get_condition("superres")
    options = condition.parse_options({}, "test")  # factor 8: the 32 px scene seen at 4x4 pixels
    image = SyntheticScenes(2, SIZE, seed=3, train=False)[1]["image"]
    raw = condition.from_item({"image": image}, options)
    noise = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    truth = condition.fidelity(image[None], raw, options)["lowres_psnr"]
    random = condition.fidelity(noise, raw, options)["lowres_psnr"]
    # The truth degrades exactly to the condition: the 1e-10 floor on the MSE, 10 log10(4e10) dB.
    assert truth == pytest.approx(10 * np.log10(4 / 1e-10))  # 106.02 dB
    assert random < 20  # measured 13.7 dB: blurred noise is a flat grey, nothing of the scene
    other = SyntheticScenes(2, SIZE, seed=4, train=False)[0]["image"]  # another scene: in between
    assert random < condition.fidelity(other[None], raw, options)["lowres_psnr"] < truth - 50


# --------------------------------------------------------------------------------------------
# models: one random image VQGAN (f = 4), tiny GPTs over it


def build_vqgan(seed: int) -> Stage1Model:
    torch.manual_seed(seed)
    return Stage1Model.build(
        ModelConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=SIZE),
        QuantizerConfig(embed_dim=8, options={"n_codes": 32}))


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("first") / "vqgan.safetensors"
    build_vqgan(0).save(path)
    return path


def spec(name: str, stage: Stage1Model, **options) -> ConditionSpec:
    condition = get_condition(name)
    return ConditionSpec(condition, condition.parse_options(options, "test"), stage)


def tiny_model(first: Stage1Model, condition: ConditionSpec | None, seed: int) -> Stage2Model:
    """A random 1-layer GPT over `first`'s codes (eval mode, as a loaded bundle)."""
    torch.manual_seed(seed)
    prefix = 1 if condition is None else WINDOW * WINDOW
    gpt = GPT(GPTConfig(first.n_codes, prefix + WINDOW * WINDOW, 1, 2, 32)).eval()
    return Stage2Model(first, gpt, WINDOW, condition)


@pytest.fixture(scope="module")
def models(first_stage):
    first = Stage1Model.load(first_stage)
    return {"unconditional": tiny_model(first, None, 1),
            "superres": tiny_model(first, spec("superres", first, factor=4), 2),
            "edge": tiny_model(first, spec("edge", first, channels=3), 3)}  # edges replicated for the image VQGAN


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(BATCH_SIZE + 4, SIZE, seed=5, train=False)  # two batches of windows


def with_condition(dataset, model: Stage2Model):
    return WithCondition(dataset, model.condition) if model.condition else dataset


class SameCondition(torch.utils.data.Dataset):
    """Items with their own images and all the first item's raw condition."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.raw = dataset[0]["cond_raw"]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {"image": self.dataset[i]["image"], "cond_raw": self.raw}


def test_unconditional_model_has_no_gain(models, scenes):
    figures = likelihood_figures(models["unconditional"], scenes)
    assert set(figures) == {"bits_per_token"}
    assert 0 < figures["bits_per_token"] < 10  # a random 32-code model: about log2(32) = 5 bits


def test_identical_conditions_give_no_gain(models, scenes):
    model = models["superres"]
    figures = likelihood_figures(model, SameCondition(WithCondition(scenes, model.condition)))
    assert figures["gain_bits"] == 0.0 and figures["gain_percent"] == 0.0
    assert figures["mismatched_bits_per_token"] == figures["bits_per_token"]


def test_gain_is_mismatched_minus_true(models, scenes):
    model = models["superres"]
    figures = likelihood_figures(model, WithCondition(scenes, model.condition))
    assert set(figures) == {"bits_per_token", "mismatched_bits_per_token", "gain_bits", "gain_percent"}
    true, mismatched = figures["bits_per_token"], figures["mismatched_bits_per_token"]
    assert true != mismatched  # a random model still reads its prefix
    assert figures["gain_bits"] == pytest.approx(mismatched - true, abs=1e-12)
    assert figures["gain_percent"] == pytest.approx(100 * (mismatched - true) / mismatched)


def test_one_item_has_no_other_condition(models, scenes):
    model = models["superres"]
    one = torch.utils.data.Subset(WithCondition(scenes, model.condition), [0])
    assert set(likelihood_figures(model, one)) == {"bits_per_token"}


def test_windows_are_the_same_across_calls_and_models(models, scenes):
    """The image tokens of every held-out window are one function of (data, first stage): two calls,
    and models with other transformers and other conditions over the same codes, score the same
    windows, so --baseline compares like with like."""
    windows = {name: held_out_windows(model, with_condition(scenes, model)) for name, model in models.items()}
    images = windows["unconditional"][1]
    assert images.shape == (len(scenes), WINDOW * WINDOW)
    for name, model in models.items():
        assert torch.equal(windows[name][1], images), name
        again = held_out_windows(model, with_condition(scenes, model))
        assert torch.equal(again[0], windows[name][0]) and torch.equal(again[1], images), name
    # the windows are drawn, not all at the top-left corner: the codes differ from those there
    codes = models["unconditional"].first_stage.encode(torch.stack([s["image"] for s in scenes]))
    assert not torch.equal(images, codes[:, :WINDOW, :WINDOW].reshape(len(scenes), -1))
    # the condition's prefix is the same window of the condition's grid
    superres = models["superres"]
    raw = torch.stack([s["cond_raw"] for s in WithCondition(scenes, superres.condition)])
    grids = superres.condition.tokens(raw)  # (N, 8, 8)
    prefixes = windows["superres"][0]
    for i in range(len(scenes)):
        image_grid = codes[i]
        tops = [(t, l) for t in range(5) for l in range(5)
                if torch.equal(image_grid[t:t + WINDOW, l:l + WINDOW].reshape(-1), images[i])]
        assert any(torch.equal(grids[i, t:t + WINDOW, l:l + WINDOW].reshape(-1), prefixes[i]) for t, l in tops)


def test_token_items_give_the_figures_of_their_images(models, scenes):
    """Items that are already tokens (as `vqt tokenize` shards hold them) score as their images do."""
    model = models["superres"]
    images = WithCondition(scenes, model.condition)
    codes, cond = held_out_tokens(model, images)
    tokens = [{"codes": codes[i], "cond": cond[i]} for i in range(len(codes))]
    assert likelihood_figures(model, tokens) == likelihood_figures(model, images)


def test_baseline_reads_its_own_condition(models, scenes):
    """A baseline conditioned on another modality is scored with its own conditions."""
    model, baseline = models["superres"], models["edge"]
    bits = likelihood_figures(model, WithCondition(scenes, model.condition))["bits_per_token"]
    figures = baseline_figures(model, baseline, scenes, bits, "edge.safetensors")
    own = likelihood_figures(baseline, WithCondition(scenes, baseline.condition))["bits_per_token"]
    assert figures["baseline_bits_per_token"] == pytest.approx(own, rel=1e-12)
    assert figures["below_baseline_percent"] == pytest.approx(100 * (own - bits) / own)


# --------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def bundles(first_stage, tmp_path_factory) -> dict[str, Path]:
    """A superres model trained 3 steps through the CLI (the image VQGAN is also its condition
    stage), and saved random models: unconditional over the same codes, and over another VQGAN."""
    folder = tmp_path_factory.mktemp("bundles")
    ok("train-stage2", str(RECIPES / "quickstart-superres.toml"), "--out", str(folder / "superres"),
       "--device", "cpu", *sets(TINY_GPT + [f"transformer.first_stage={first_stage}",
                                            f"condition.stage={first_stage}", "condition.factor=4"]))
    first = Stage1Model.load(first_stage)
    tiny_model(first, None, 1).save(folder / "unconditional.safetensors")
    foreign = build_vqgan(1)
    foreign.vqgan.eval()
    tiny_model(foreign, None, 1).save(folder / "foreign.safetensors")
    return {"superres": folder / "superres" / "last.safetensors",
            "unconditional": folder / "unconditional.safetensors",
            "foreign": folder / "foreign.safetensors", "first_stage": first_stage}


def test_eval_stage2_prints_figures_and_writes_the_grid(bundles):
    model = bundles["superres"]
    out = json.loads(ok("eval", "synthetic", "--model", str(model), "--n", "6", "--json", "--device", "cpu"))
    grid = model.parent / "last-eval-synthetic.png"  # <model>-eval-<data>.png
    assert out["grid"] == str(grid) and grid.is_file()
    assert out["kind"] == "stage2" and out["n"] == 6 and out["window"] == WINDOW and out["condition"] == "superres"
    assert out["gain_bits"] == pytest.approx(out["mismatched_bits_per_token"] - out["bits_per_token"])
    assert set(out["fidelity"]) == {"lowres_psnr"} and out["fidelity"]["lowres_psnr"] > 0

    # the figures are likelihood_figures on `vqt eval`'s own held-out scenes, at the window's size
    stage2 = Stage2Model.load(model)
    side = WINDOW * stage2.factor  # 16 px
    data = WithCondition(evaluation_dataset("synthetic", side, 3, 6), stage2.condition)
    assert out["bits_per_token"] == pytest.approx(likelihood_figures(stage2, data)["bits_per_token"], rel=1e-6)

    # 4 rows of [condition | 3 samples | ground truth], 16x16 px cells (the window) with 2 px padding
    picture = np.asarray(Image.open(grid))
    assert picture.shape == (4 * side + 5 * 2, 5 * side + 6 * 2, 3)
    truth = (data[0]["image"][:, :side, :side].permute(1, 2, 0).numpy() + 1) * 127.5
    cell = picture[2:2 + side, 2 + 4 * (side + 2):2 + 4 * (side + 2) + side].astype(float)
    assert np.abs(cell - truth).max() <= 1  # the last column is the ground truth

    again = vqt("eval", "synthetic", "--model", str(model), "--n", "6")
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    text = ok("eval", "synthetic", "--model", str(model), "--n", "6", "--force")
    assert "condition information gain" in text and "fidelity lowres_psnr" in text


def test_eval_on_other_data_writes_another_grid(bundles, tmp_path):
    model = bundles["superres"]
    folder = tmp_path / "scenes.v2"  # a dot in the folder's name stays in the grid's name
    folder.mkdir()
    for k in range(3):
        Image.fromarray(((SyntheticScenes(3, SIZE, seed=9, train=False)[k]["image"].permute(1, 2, 0).numpy() + 1)
                         * 127.5).round().astype(np.uint8)).save(folder / f"{k}.png")
    out = json.loads(ok("eval", str(folder), "--model", str(model), "--json", "--device", "cpu"))
    assert out["grid"] == str(model.parent / "last-eval-scenes.v2.png") and out["n"] == 3
    held_out = tmp_path / "heldout.toml"  # a recipe: its held-out scenes
    held_out.write_text('[data]\nsource = "synthetic"\nsize = 32\nval_n = 3\n')
    recipe = json.loads(ok("eval", str(held_out), "--model", str(model), "--json", "--device", "cpu"))
    assert recipe["grid"] == str(model.parent / "last-eval-heldout.png") and recipe["n"] == 3
    assert Path(out["grid"]).is_file() and Path(recipe["grid"]).is_file()


def test_baseline_with_the_model_itself(bundles, tmp_path):
    model = str(bundles["superres"])
    out = json.loads(ok("eval", "synthetic", "--model", model, "--baseline", model, "--n", "5", "--json",
                        "--grid", str(tmp_path / "g.png")))
    assert out["baseline_bits_per_token"] == out["bits_per_token"]
    assert out["below_baseline_percent"] == 0


def test_baseline_unconditional_over_the_same_codes(bundles, tmp_path):
    out = json.loads(ok("eval", "synthetic", "--model", str(bundles["superres"]), "--baseline",
                        str(bundles["unconditional"]), "--n", "5", "--json", "--grid", str(tmp_path / "g.png")))
    base = Stage2Model.load(bundles["unconditional"])
    own = likelihood_figures(base, evaluation_dataset("synthetic", 16, 3, 5))["bits_per_token"]
    assert out["baseline_bits_per_token"] == pytest.approx(own, rel=1e-6)
    assert out["below_baseline_percent"] == pytest.approx(100 * (own - out["bits_per_token"]) / own)


def test_baseline_over_another_first_stage_is_refused(bundles, tmp_path):
    result = vqt("eval", "synthetic", "--model", str(bundles["superres"]), "--baseline", str(bundles["foreign"]),
                 "--n", "5", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 1, result.output
    assert "codes images with another stage-1 model" in result.output
    assert not (tmp_path / "g.png").exists()  # refused before anything is written


def test_baseline_must_be_a_stage2_bundle(bundles, tmp_path):
    result = vqt("eval", "synthetic", "--model", str(bundles["superres"]), "--baseline",
                 str(bundles["first_stage"]), "--n", "5", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 1 and "stage1" in result.output and "stage-2" in result.output, result.output


def test_eval_stage1_still_works_and_refuses_baseline(bundles, tmp_path):
    first = str(bundles["first_stage"])
    out = json.loads(ok("eval", "synthetic", "--model", first, "--n", "4", "--json", "--grid",
                        str(tmp_path / "s1.png")))
    assert out["kind"] == "stage1" and out["n"] == 4
    assert {"psnr", "ssim", "lpips", "codebook_usage", "perplexity"} <= set(out)
    assert (tmp_path / "s1.png").is_file()
    result = vqt("eval", "synthetic", "--model", first, "--baseline", str(bundles["unconditional"]),
                 "--n", "4", "--grid", str(tmp_path / "s1b.png"))
    assert result.exit_code == 1 and "--baseline compares stage-2 models" in result.output


def test_sizes_smaller_than_the_window_are_refused(bundles, tmp_path):
    result = vqt("eval", "synthetic", "--model", str(bundles["superres"]), "--size", "8", "--n", "2",
                 "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 1 and "at least its window of 16 pixels" in result.output
    # a recipe's held-out scenes come at the recipe's size, whatever --size says
    recipe = tmp_path / "small.toml"
    recipe.write_text('[data]\nsource = "synthetic"\nsize = 8\nval_n = 2\n')
    result = vqt("eval", str(recipe), "--model", str(bundles["superres"]), "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 1, result.output
    assert "8x8" in result.output and "window of 16x16 pixels" in result.output, result.output
