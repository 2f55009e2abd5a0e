"""Classifier-free guidance for grid conditions (condition.dropout): the null token, whole-grid dropout,
the bundle, and guided sampling with both samplers against a hand-computed reference."""

import pytest
import torch

from vqtoolkit.errors import RecipeError, VqtError
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.plugins import get_condition
from vqtoolkit.recipes import ConditionConfig, ModelConfig, QuantizerConfig
from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.stage2 import Stage2Model

from .test_local_transformer import first, local_gpt, reference  # noqa: F401 (first: the 16-code image VQGAN fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = 4


@pytest.fixture(scope="module")
def depth_stage():
    """A one-channel VQGAN with 15 codes: its null token is 15, the last of the 16 image codes (ids are shared)."""
    torch.manual_seed(1)
    return Stage1Model.build(ModelConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                                         z_channels=8, resolution=16, in_channels=1, out_channels=1),
                             QuantizerConfig(embed_dim=8, options={"n_codes": 15}))


def depth(stage, dropout: float) -> ConditionSpec:
    found = get_condition("depth")
    return ConditionSpec(found, found.parse_options({}, "test"), stage, dropout)


def test_dropout_adds_a_null_token_and_drops_whole_grids(depth_stage):
    spec = depth(depth_stage, 0.25)
    assert depth(depth_stage, 0.0).vocab_size() == 15 and spec.vocab_size() == 16
    assert torch.equal(spec.null_tokens(), torch.tensor([15]))
    assert depth(depth_stage, 0.0).null_tokens() is None
    tokens = torch.randint(15, (2000, 3, 4), generator=torch.Generator().manual_seed(0))
    dropped = spec.train_tokens(tokens, torch.Generator().manual_seed(1))
    null = (dropped == 15).flatten(1)
    assert torch.equal(null.all(1), null.any(1))  # a grid is dropped whole or not at all
    assert torch.equal(dropped[~null.all(1)], tokens[~null.all(1)])
    assert 0.22 < null.all(1).float().mean() < 0.28


def test_dropout_is_refused_where_it_has_no_meaning():
    with pytest.raises(RecipeError, match=r"condition.dropout = 1.0 is invalid: expected a number in \[0, 1\)"):
        ConditionConfig(name="depth", dropout=1.0)
    with pytest.raises(RecipeError, match="condition.dropout applies to spatial conditions encoded by a VQGAN, "
                                          "not 'class'"):
        ConditionSpec.from_config(ConditionConfig(name="class", dropout=0.1), "recipe.toml")


def test_local_guidance_with_a_grid_matches_the_reference(first, depth_stage, tmp_path):
    model = Stage2Model(first, local_gpt(True, WINDOW * WINDOW), WINDOW, depth(depth_stage, 0.1))
    model.save(tmp_path / "guided.safetensors")
    loaded = Stage2Model.load(tmp_path / "guided.safetensors")
    assert loaded.condition.dropout == 0.1 and loaded.condition.vocab_size() == 16
    raw = torch.rand(1, 24, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _, codes = loaded.sample(1, (24, 28), cond=raw, cfg_scale=3.0, top_k=1)
    cond = loaded.condition.tokens(raw[None])  # (1, 6, 7)
    assert torch.equal(codes, reference(loaded.gpt, cond, (6, 7), (torch.tensor([15]), 3.0)))
    _, plain = loaded.sample(1, (24, 28), cond=raw, top_k=1)
    assert not torch.equal(codes, plain)


def test_full_attention_guidance_nulls_the_whole_window(first, depth_stage):
    torch.manual_seed(3)
    gpt = GPT(GPTConfig(16, 2 * WINDOW * WINDOW, 2, 2, 16)).eval()
    model = Stage2Model(first, gpt, WINDOW, depth(depth_stage, 0.1))
    raw = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    _, codes = model.sample(1, (16, 16), cond=raw, cfg_scale=2.0, top_k=1)
    prefix = model.condition.tokens(raw[None]).flatten(1)  # (1, 16)
    null = torch.full_like(prefix, 15)
    idx = torch.zeros(1, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(WINDOW * WINDOW):
            c = gpt(torch.cat([prefix, idx], 1))[:, -1]
            u = gpt(torch.cat([null, idx], 1))[:, -1]
            idx = torch.cat([idx, (u + 2.0 * (c - u)).argmax(-1, keepdim=True)], 1)
    assert torch.equal(codes.flatten(1), idx)


def test_guidance_without_dropout_says_how_to_train_for_it(first, depth_stage):
    model = Stage2Model(first, local_gpt(True, WINDOW * WINDOW), WINDOW, depth(depth_stage, 0.0))
    with pytest.raises(VqtError, match="condition.dropout"):
        model.sample(1, (16, 16), cond=torch.zeros(1, 16, 16), cfg_scale=2.0)
