"""Every shipped recipe parses, and ffhq.toml builds the paper's f16 VQGAN."""

from pathlib import Path

import pytest
import torch

from vqtoolkit.api import build_vqgan
from vqtoolkit.recipes import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


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
