"""The local-attention transformer and its rolling-cache sampler (transformer.attention = "local").

The ground truth is the dense masked forward (`LocalGPT.grid_logits`) over the whole grid known so far;
the rolling cache must reproduce it token for token at sizes beyond the training crop.
"""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vqtoolkit.cli import cli
from vqtoolkit.errors import VqtError
from vqtoolkit.models.local_transformer import LocalGPT
from vqtoolkit.models.transformer import GPTConfig, image_loss
from vqtoolkit.plugins import get_condition
from vqtoolkit.recipes import ModelConfig, QuantizerConfig
from vqtoolkit.sampling_local import ConditionRows, RollingCache, null_condition, sample_local
from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.stage2 import Stage2Model


pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, WINDOW = 16, 4


def local_gpt(grid_condition: bool = False, n_prefix: int = 1, neighbourhood=(2, 4), n_layer: int = 2,
              seed: int = 0) -> LocalGPT:
    """Random weights large enough that greedy codes follow the context (zero biases would not)."""
    torch.manual_seed(seed)
    config = GPTConfig(VOCAB, n_prefix + WINDOW * WINDOW, n_layer, 2, 16, attention="local",
                       neighbourhood=neighbourhood)
    gpt = LocalGPT(config, WINDOW, grid_condition)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if p.ndim >= 2 or name.startswith("bias"):
                p.normal_(0, 0.5)
    return gpt.eval()


def reference(gpt: LocalGPT, cond: torch.Tensor, grid: tuple[int, int], guidance=None) -> torch.Tensor:
    """Greedy codes, each from one dense forward over everything generated so far."""
    H, W = grid
    B = cond.shape[0]
    if guidance is not None:
        cond = torch.cat([cond, null_condition(cond, guidance[0])])
    idx = torch.zeros(B, H * W, dtype=torch.long)
    with torch.no_grad():
        for t in range(H * W):
            known = idx[:, :t] if guidance is None else idx[:, :t].repeat(2, 1)
            logits = gpt.grid_logits(cond, known, W)[:, t]  # (B', V)
            if guidance is not None:
                c, u = logits.chunk(2)
                logits = u + guidance[1] * (c - u)
            idx[:, t] = logits.argmax(-1)
    return idx.view(B, H, W)


# (a) locality ----------------------------------------------------------------------------------


def test_a_token_sees_exactly_its_neighbourhood():
    """One layer, neighbourhood (2, 4): code (4, 4) reads codes (4, 2..3), rows 2..3 at columns 2..6, and
    the condition rows 2..6 at columns 2..6; nothing else."""
    gpt = local_gpt(grid_condition=True, n_prefix=WINDOW * WINDOW, n_layer=1)
    H, W, y, x = 7, 9, 4, 4
    cond, codes = torch.randint(VOCAB, (1, H, W)), torch.randint(VOCAB, (1, H, W))

    def logit(cond, codes):
        with torch.no_grad():
            return gpt.grid_logits(cond, codes.flatten(1)[:, :y * W + x], W)[0, y * W + x]

    base = logit(cond, codes)
    for what, (r, c), inside in [("code", (4, 3), True), ("code", (4, 2), True), ("code", (4, 1), False),
                                 ("code", (2, 2), True), ("code", (3, 6), True), ("code", (3, 7), False),
                                 ("code", (1, 4), False), ("code", (3, 1), False), ("code", (4, 5), False),
                                 ("code", (5, 4), False), ("cond", (6, 6), True), ("cond", (2, 2), True),
                                 ("cond", (4, 4), True), ("cond", (1, 4), False), ("cond", (4, 7), False)]:
        changed_cond, changed_codes = cond.clone(), codes.clone()
        target = changed_cond if what == "cond" else changed_codes
        target[0, r, c] = (target[0, r, c] + 1) % VOCAB
        same = torch.equal(logit(changed_cond, changed_codes), base)
        assert same != inside, f"{what} ({r}, {c}) should be {'inside' if inside else 'outside'}"


def test_training_loss_reads_the_crop_as_the_dense_forward():
    gpt = local_gpt(grid_condition=True, n_prefix=WINDOW * WINDOW)
    prefix, image = torch.randint(VOCAB, (3, 16)), torch.randint(VOCAB, (3, 16))
    logits = gpt(torch.cat([prefix, image], dim=1)[:, :-1])
    assert logits.shape == (3, 31, VOCAB)
    dense = gpt.grid_logits(prefix.view(3, 4, 4), image[:, :-1], WINDOW)
    torch.testing.assert_close(logits[:, 15:], dense)
    assert torch.isfinite(image_loss(logits, image, 16))
    with pytest.raises(VqtError, match="4x4 crop"):
        gpt(torch.randint(VOCAB, (1, 20)))


def test_relative_positions_are_learnt_within_a_short_run():
    """Every row repeats the first, so only the offset of the code above tells which neighbour to copy.
    Adam moves a parameter by about lr a step: unscaled biases (BIAS_SCALE = 1) stay under 0.3 logits
    in these 100 steps and the loss on the copied rows stays near 1.1 nats; scaled, it falls to ~0.04."""
    torch.manual_seed(1)
    config = GPTConfig(VOCAB, 1 + WINDOW * WINDOW, 1, 1, 32, attention="local", neighbourhood=(1, 4))
    gpt = LocalGPT(config, WINDOW, grid_condition=False)
    opt = gpt.configure_optimizer(3e-3, 0.0)
    g = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = torch.randint(VOCAB, (n, 1, WINDOW), generator=g).expand(n, WINDOW, WINDOW).flatten(1)
        return torch.cat([torch.zeros(n, 1, dtype=torch.long), crops], dim=1)[:, :-1], crops

    for _ in range(100):
        idx, crops = batch(32)
        loss = image_loss(gpt(idx), crops, 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx, crops = batch(256)
    with torch.no_grad():
        copied = gpt(idx)[:, WINDOW:]  # with one prefix token, logit k predicts code k: rows 1..
    assert F.cross_entropy(copied.reshape(-1, VOCAB), crops[:, WINDOW:].reshape(-1)) < 0.2


# (b) the rolling cache is the dense forward, token for token -------------------------------------


@pytest.mark.parametrize("grid", [(7, 9), (11, 5)])
def test_rolling_sampler_is_the_reference_unconditional(grid):
    gpt = local_gpt(seed=1)  # (greedy codes of unconditional seeds 0 and 2 are constant)
    cond = torch.zeros(2, 1, dtype=torch.long)
    codes = sample_local(gpt, cond, grid, top_k=1)
    assert torch.equal(codes, reference(gpt, cond, grid))
    assert len(codes.unique()) >= 3  # a comparison of constant grids would prove little


@pytest.mark.parametrize("neighbourhood, n_layer, grid", [((2, 4), 3, (7, 9)), ((1, 2), 2, (13, 5)),
                                                          ((1, 3), 3, (11, 6))])
def test_rolling_sampler_is_the_reference_with_a_condition_grid(neighbourhood, n_layer, grid):
    """(13, 5) with one row above and two layers: the condition is computed in several bands."""
    gpt = local_gpt(True, WINDOW * WINDOW, neighbourhood, n_layer)
    cond = torch.randint(VOCAB, (2, *grid), generator=torch.Generator().manual_seed(1))
    codes = sample_local(gpt, cond, grid, top_k=1)
    assert torch.equal(codes, reference(gpt, cond, grid))
    assert len(codes.unique()) >= 3


def test_rolling_sampler_is_the_reference_with_a_class_and_guidance():
    gpt = local_gpt()
    cond, guidance = torch.tensor([[3], [5]]), (torch.tensor([15]), 2.0)
    codes = sample_local(gpt, cond, (6, 7), top_k=1, guidance=guidance)
    assert torch.equal(codes, reference(gpt, cond, (6, 7), guidance))
    assert not torch.equal(codes, sample_local(gpt, cond, (6, 7), top_k=1))


# (c) memory is bounded by rows -------------------------------------------------------------------


def test_caches_hold_only_their_rows_whatever_the_height():
    gpt = local_gpt(True, WINDOW * WINDOW, (2, 4), n_layer=2)  # h = 2, a = 2, hs = 8
    cache = RollingCache(gpt, batch=3, width=9)
    assert cache.keys.shape == (2, 3, 2, 2 * 3, 9 + 2 * 2 + 2, 8) == cache.values.shape  # h + 1 rows, twice
    for height in (10, 40):
        rows = ConditionRows(gpt, torch.randint(VOCAB, (3, height, 9)))
        assert rows.keys.shape == (2, 3, 2, 2 * 5, 9 + 2 * 2 + 1, 8)  # 2h + 1 rows, twice
        for y in range(height):
            rows.advance(y)
            assert rows.band_kv[0].shape[3] <= rows.band == 5  # bands of max(2·(L - 1)·h, 2h + 1) rows


# (d) bundles and the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def first():
    torch.manual_seed(0)
    return Stage1Model.build(ModelConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                                         z_channels=8, resolution=16), QuantizerConfig(embed_dim=8, options={"n_codes": 16}))


def stage2(first, spec=None) -> Stage2Model:
    grid = spec is not None and spec.grid_like
    return Stage2Model(first, local_gpt(grid, WINDOW * WINDOW if grid else 1), WINDOW, spec)


def condition(name: str, **options) -> ConditionSpec:
    found = get_condition(name)
    return ConditionSpec(found, found.parse_options(options, "test"), None)


def test_bundle_round_trip_keeps_the_local_model(first, tmp_path):
    model = stage2(first, condition("coordinates", n_codes=16, down_factor=4))
    model.save(tmp_path / "local.safetensors")
    loaded = Stage2Model.load(tmp_path / "local.safetensors")
    assert isinstance(loaded.gpt, LocalGPT) and loaded.gpt.grid_condition and loaded.local
    assert loaded.gpt.config == model.gpt.config
    _, a = model.sample(1, (28, 36), cond=torch.zeros(1, 28, 36), top_k=1)
    _, b = loaded.sample(1, (28, 36), cond=torch.zeros(1, 28, 36), top_k=1)
    assert torch.equal(a, b) and a.shape == (1, 7, 9)


def test_local_models_refuse_a_window_stride(first):
    with pytest.raises(VqtError, match="rolling cache"):
        stage2(first).sample(1, (16, 16), window_stride=2)


def test_class_guidance_through_the_model(first):
    model = stage2(first, condition("class", n_classes=4))
    _, codes = model.sample(2, (24, 20), cond=torch.tensor([2]), cfg_scale=2.0, top_k=1)
    expected = reference(model.gpt, torch.tensor([[2], [2]]), (6, 5), (torch.tensor([4]), 2.0))
    assert torch.equal(codes, expected)


def test_train_and_sample_through_the_command_line(first, tiny_stage2, tmp_path):
    first.save(tmp_path / "vqgan.safetensors")
    recipe = tiny_stage2(tmp_path / "local.toml", tmp_path / "vqgan.safetensors", attention="local",
                         neighbourhood=[1, 2])
    result = CliRunner().invoke(cli, ["train-stage2", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "run" / "last.safetensors"
    assert Stage2Model.load(bundle).gpt.config.neighbourhood == (1, 2)
    out = tmp_path / "big.png"
    result = CliRunner().invoke(cli, ["sample", "--model", str(bundle), "--size", "44x20", "-o", str(out), "--codes"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and tmp_path.joinpath("big.npy").is_file()
    result = CliRunner().invoke(cli, ["sample", "--model", str(bundle), "--size", "16x16", "-o", str(tmp_path / "s.png"),
                                      "--window-stride", "2"])
    assert result.exit_code != 0 and "--window-stride applies to full-attention" in result.output


# (e) editing -------------------------------------------------------------------------------------


def test_inpainting_keeps_unmasked_codes_and_matches_the_reference(first):
    model = stage2(first, condition("class", n_classes=4))
    image = torch.rand(3, 24, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels = torch.zeros(24, 28, dtype=torch.bool)
    pixels[5:17, 9:26] = True
    _, codes = model.edit(image, 1, mask=pixels, cond=torch.tensor([1]), top_k=1)
    known = first.encode(image[None])  # (1, 6, 7)
    masked = pixels.view(6, 4, 7, 4).any(3).any(1)
    assert torch.equal(codes[:, ~masked], known[:, ~masked])
    expected = known.clone().flatten(1)  # the reference: dense forwards, masked codes drawn greedily
    with torch.no_grad():
        for t in masked.flatten().nonzero().flatten().tolist():
            expected[:, t] = model.gpt.grid_logits(torch.tensor([[1]]), expected[:, :t], 7)[:, t].argmax(-1)
    assert torch.equal(codes, expected.view(1, 6, 7))
    assert not torch.equal(codes, known)


# resuming ----------------------------------------------------------------------------------------


def test_runs_from_before_local_attention_resume_and_a_changed_attention_is_refused(tmp_path):
    from types import SimpleNamespace

    from vqtoolkit.recipes import Recipe, TransformerConfig, recipe_to_dict
    from vqtoolkit.train.stage2 import ARCHITECTURE
    from vqtoolkit.train.state import same_architecture

    run = SimpleNamespace(path=tmp_path, recipe=tmp_path / "recipe.toml")
    saved = recipe_to_dict(Recipe())
    for key in ("attention", "neighbourhood"):  # what a run state written before these keys holds
        del saved["transformer"][key]
    same_architecture({"recipe": saved}, Recipe(), run, ARCHITECTURE)
    with pytest.raises(VqtError, match=r"\[transformer\] differs"):
        same_architecture({"recipe": saved}, Recipe(transformer=TransformerConfig(attention="local")), run,
                          ARCHITECTURE)
