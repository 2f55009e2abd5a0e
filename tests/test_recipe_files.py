"""Every shipped recipe parses; the modality recipes agree with their stages; ffhq.toml and
drin-depth.toml build the paper's models (parameter counts)."""

import tomllib
from pathlib import Path

import pytest
import torch

from vqtoolkit.api import Stage1Model, build_vqgan
from vqtoolkit.plugins import get_condition
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.recipes import Recipe, load_recipe, recipe_from_dict
from vqtoolkit.train.stage2 import build_gpt

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.toml"))
MODALITY_RECIPES = sorted(p.stem for p in RECIPES
                          if p.stem not in ("quickstart", "quickstart-stage2", "quickstart-stage2-local", "ffhq", "imagenet"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(path):
    load_recipe(path)


def test_ffhq_recipe_has_the_reference_parameter_counts():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "ffhq.toml")
    with torch.device("meta"):
        vqgan = build_vqgan(recipe.model, recipe.quantizer)
    assert sum(p.numel() for p in vqgan.encoder.parameters()) == 29_298_176
    assert sum(p.numel() for p in vqgan.decoder.parameters()) == 42_449_795
    assert vqgan.factor == 16


# --------------------------------------------------------------------------------------------
# modality recipes


def _sections(stem: str, keep: tuple[str, ...]) -> Recipe:
    """Some sections of a recipe (enough to build models; skips [data], whatever its source)."""
    tables = tomllib.loads((RECIPE_DIR / f"{stem}.toml").read_text())
    return recipe_from_dict({k: v for k, v in tables.items() if k in keep}, stem)


def _stem(run_path: str) -> str:
    """runs/<stem>/last.safetensors -> <stem>: the recipe that trains it (by the default run folder)."""
    parts = Path(run_path).parts
    assert parts[0] == "runs" and parts[-1] == "last.safetensors", run_path
    return parts[1]


@pytest.mark.parametrize("stem", MODALITY_RECIPES)
def test_modality_recipe_is_consistent(stem):
    recipe = load_recipe(RECIPE_DIR / f"{stem}.toml")
    condition = get_condition(recipe.condition.name)
    options = condition.parse_options(recipe.condition.options, stem)
    if stem.endswith("-stage"):  # a condition VQGAN: reads and writes the raw condition's channels
        channels = condition.stage_channels(options)
        assert recipe.model.in_channels == recipe.model.out_channels == recipe.loss.disc_in_channels == channels
        assert (recipe.loss.pixel_loss == "bce") == (condition.name == "segmentation")
        return
    first = _sections(_stem(recipe.transformer.first_stage), ("model",)) if (
        RECIPE_DIR / f"{_stem(recipe.transformer.first_stage)}.toml").exists() else None
    if condition.name == "coordinates" and first is not None:
        assert options.down_factor == first.model.factor
    if condition.has_stage:
        stage_stem = _stem(recipe.condition.stage)
        if stage_stem == _stem(recipe.transformer.first_stage):  # encoded by the image VQGAN itself
            assert condition.stage_channels(options) == 3
            return
        stage = _sections(stage_stem, ("model", "condition"))
        assert stage.condition.name == condition.name and stage.condition.options == recipe.condition.options
        if first is not None:
            assert stage.model.factor == first.model.factor  # the grids must match
    else:
        assert not recipe.condition.stage


# --------------------------------------------------------------------------------------------
# the paper's depth-conditional transformer


def _drin_gpt() -> torch.nn.Module:
    """drin-depth's GPT built on the meta device by train-stage2's own `build_gpt`."""
    recipe = _sections("drin-depth", ("transformer", "condition"))
    first_recipe, stage_recipe = _sections("imagenet", ("model", "quantizer")), _sections(
        "drin-depth-stage", ("model", "quantizer", "condition"))
    with torch.device("meta"):
        first = Stage1Model.build(first_recipe.model, first_recipe.quantizer)
        stage = Stage1Model.build(stage_recipe.model, stage_recipe.quantizer)
        condition = get_condition("depth")
        spec = ConditionSpec(condition, condition.parse_options({}, "drin-depth"), stage)
        return build_gpt(recipe, first, spec)


def test_drin_depth_builds_the_papers_transformer():
    gpt = _drin_gpt()
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd, gpt.vocab_size) == (24, 16, 1024, 1024)
    without_positions = sum(p.numel() for name, p in gpt.named_parameters() if name != "pos_emb")
    assert without_positions == 304_408_576


def test_drin_depth_transformer_has_the_papers_parameter_count():
    gpt = _drin_gpt()
    assert gpt.block_size == 512
    assert sum(p.numel() for p in gpt.parameters()) == 304_932_864
