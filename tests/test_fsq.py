"""FSQ: the index <-> code round trip over every code, recipe checks, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.cli import cli
from vqtoolkit.errors import RecipeError
from vqtoolkit.models.fsq import FSQuantizer
from vqtoolkit.quantizer_options import build_quantizer, complete_quantizer
from vqtoolkit.recipes import QuantizerConfig

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAPER = [(8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5)]  # 2^10, 2^12, 2^14 in the paper's table


def identity_fsq(levels) -> FSQuantizer:
    """FSQ whose projections are the identity, so inputs are the pre-bound values themselves."""
    q = FSQuantizer(levels, len(levels)).eval()
    with torch.no_grad():
        for conv in (q.proj_in, q.proj_out):
            conv.weight.copy_(torch.eye(len(levels)).view(len(levels), len(levels), 1, 1))
            conv.bias.zero_()
    return q


def inputs_for(levels, codes: torch.Tensor) -> torch.Tensor:
    """Pre-bound inputs (N, d) that the paper's bound maps into the rounding cell of each integer code:
    tanh(z + shift) * half - offset, with half = (L - 1)(1 - 1e-3) / 2 and offset 1/2 for even L."""
    levels_t = torch.tensor(levels, dtype=torch.float64)
    half = (levels_t - 1) * (1 - 1e-3) / 2
    offset = (torch.tensor(levels) % 2 == 0).double() * 0.5
    lo, hi = -half - offset, half - offset
    target = torch.minimum(torch.maximum(codes.double(), lo + 0.25), hi - 0.25)  # inside the outer cells
    return (torch.atanh((target + offset) / half) - torch.atanh(offset / half)).float()


@pytest.mark.parametrize("levels", PAPER)
def test_every_index_round_trips_through_its_code(levels):
    q = identity_fsq(levels)
    n = math.prod(levels)
    assert q.n_codes == n
    indices = torch.arange(n).view(1, 1, n)
    codes = q.indices_to_quantized(indices)  # (1, d, 1, n) in [-1, 1]
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c) for c in codes[0, :, 0].t().tolist()}) == n  # n distinct codes
    half_width = torch.tensor([level // 2 for level in levels]).view(1, -1, 1, 1)
    integers = torch.round(codes * half_width).long()[0, :, 0].t()  # (n, d)
    z = inputs_for(levels, integers).t().reshape(1, len(levels), 1, n)
    quantized, back, loss, stats = q(z)
    assert torch.equal(back, indices)  # index -> code -> index
    assert torch.equal(quantized, codes)
    assert loss.item() == 0 and stats["perplexity"].item() == pytest.approx(n, rel=1e-4)


def test_eval_output_equals_indices_to_quantized_exactly():
    torch.manual_seed(0)
    q = FSQuantizer((8, 5, 5, 5), 16)
    z = 3 * torch.randn(2, 16, 5, 7)
    q.train()
    quantized, indices, _, _ = q(z)
    assert torch.equal(quantized, q.indices_to_quantized(indices))
    q.eval()
    quantized, indices, _, _ = q(z)
    assert indices.shape == (2, 5, 7) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < 1000
    assert torch.equal(quantized, q.indices_to_quantized(indices))


def test_gradient_reaches_the_encoder_and_usage_counts_batches():
    torch.manual_seed(0)
    q = FSQuantizer((5, 3), 4, usage_window=2)
    encoder = torch.nn.Conv2d(3, 4, 1)
    quantized, indices, loss, stats = q(encoder(torch.randn(2, 3, 8, 8)))
    quantized.pow(2).sum().backward()
    assert encoder.weight.grad.abs().sum() > 0 and q.proj_in.weight.grad.abs().sum() > 0
    assert stats["usage"].item() == pytest.approx(len(indices.unique()) / 15)


def config(**options) -> QuantizerConfig:
    return QuantizerConfig(kind="fsq", embed_dim=8, options=options)


def test_n_codes_follows_levels_and_a_conflict_is_refused():
    assert build_quantizer(config(levels=[7, 5, 5, 5, 5])).n_codes == 4375
    assert complete_quantizer(config(levels=[8, 5, 5, 5], n_codes=1000), "r.toml").options == \
        {"levels": [8, 5, 5, 5], "usage_window": 100}  # stored in full; n_codes is derived
    with pytest.raises(RecipeError, match=r"r.toml: quantizer.n_codes = 1024 disagrees with quantizer.levels = "
                                          r"\[8, 5, 5, 5\], which give 1000 codes.*remove n_codes, or the "
                                          r"paper's levels = \[8, 5, 5, 5\]"):
        complete_quantizer(config(n_codes=1024), "r.toml")
    with pytest.raises(RecipeError, match=r"quantizer.levels = \[8, 2\] is invalid"):
        complete_quantizer(config(levels=[8, 2]), "r.toml")
    with pytest.raises(RecipeError, match="unknown key 'quantizer.level'.*did you mean 'levels'"):
        complete_quantizer(config(level=[5, 5]), "r.toml")


def vqt(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"vqt {' '.join(map(str, args))}\n{result.output}\n{result.exception!r}"
    return result.stdout  # (progress bars go to stderr)


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


STAGE1 = ["data.size=32", "data.n=16", "data.val_n=2", "data.num_workers=0", "model.ch=32", "model.ch_mult=[1,1,1,1]",
          "model.z_channels=16", "quantizer.kind=fsq", "quantizer.embed_dim=16", "quantizer.levels=[5,3,3]",
          "quantizer.n_codes=45",  # the quick start sets 1024; fsq accepts n_codes that agrees with levels
          "loss.disc_start=1000", "train.channels_last=false", "train.batch_size=4", "train.max_steps=6",
          "train.checkpoint_every=1000", "train.sample_every=1000", "train.log_every=1000"]
STAGE2 = ["data.size=32", "data.n=8", "data.val_n=2", "data.num_workers=0", "sample.n=1", "transformer.n_layer=1",
          "transformer.n_head=2", "transformer.n_embd=32", "transformer.window=4", "transformer.warmup_steps=0",
          "train.batch_size=4", "train.max_steps=3", "train.checkpoint_every=1000", "train.sample_every=1000",
          "train.log_every=1000"]


def test_fsq_trains_tokenizes_trains_stage2_and_samples(tmp_path):
    vqt("train-stage1", RECIPES / "quickstart.toml", "--out", tmp_path / "vq", "--device", "cpu", *sets(STAGE1))
    first = tmp_path / "vq" / "last.safetensors"
    resolved = (tmp_path / "vq" / "recipe.toml").read_text()  # the run folder lists every option
    assert 'kind = "fsq"' in resolved and "levels = [5, 3, 3]" in resolved and "usage_window = 100" in resolved
    figures = json.loads(vqt("eval", "synthetic", "--model", first, "--n", "8", "--size", "32", "--json",
                             "--device", "cpu"))
    assert 0 < figures["codebook_usage"] <= 1

    stage2 = [*STAGE2, f"transformer.first_stage={first}"]
    vqt("tokenize", RECIPES / "quickstart-stage2.toml", "--out", tmp_path / "tokens", "--device", "cpu",
        *sets(stage2))
    vqt("train-stage2", RECIPES / "quickstart-stage2.toml", "--out", tmp_path / "gpt", "--device", "cpu",
        *sets([*stage2, f"data.tokens={tmp_path / 'tokens'}"]))
    vqt("sample", "--model", tmp_path / "gpt" / "last.safetensors", "--size", "64x48", "--n", "1",
        "-o", tmp_path / "out", "--device", "cpu")
    assert Image.open(tmp_path / "out" / "sample_0000.png").size == (64, 48)
    from vqtoolkit import Stage2Model

    assert Stage2Model.load(tmp_path / "gpt" / "last.safetensors").first_stage.n_codes == 45
