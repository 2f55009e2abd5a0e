import math

import pytest
import torch

from vqtoolkit.errors import VqtError
from vqtoolkit.models.quantize import GumbelQuantizer, VectorQuantizer
from vqtoolkit.quantizer_options import build_quantizer
from vqtoolkit.recipes import QuantizerConfig


def config(kind: str = "vq", embed_dim: int = 8, **options) -> QuantizerConfig:
    return QuantizerConfig(kind=kind, embed_dim=embed_dim, options=options)

VARIANTS = {
    "reference": dict(kind="vq", codebook_dim=0, l2_normalize=False, restart_dead=False, legacy_beta=True),
    "factorized_l2": dict(kind="vq"),
    "ema": dict(kind="vq", ema=True, codebook_dim=0, l2_normalize=False),
    "factorized_ema": dict(kind="vq", ema=True),
    "gumbel": dict(kind="gumbel", temperature_anneal_steps=10),
}


def set_codes(q: VectorQuantizer, codes) -> None:
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor(codes, dtype=torch.float32))


def column(values) -> torch.Tensor:  # 1-d values -> (1, 1, 1, N) map of 1-channel vectors
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_indices_to_quantized_is_exact(name):
    torch.manual_seed(0)
    options = dict(VARIANTS[name])
    q = build_quantizer(config(n_codes=16, usage_window=2, **options))
    z = torch.randn(2, 8, 4, 5)
    for step in range(4):  # exercise training updates (EMA, restarts, temperature) first
        q.set_step(step)
        quantized, indices, loss, _ = q(z)
    if not options.get("ema"):  # EMA moves the codes after the lookup
        assert torch.equal(quantized, q.indices_to_quantized(indices))
    q.eval()
    quantized, indices, loss, stats = q(z)
    assert indices.shape == (2, 4, 5) and indices.dtype == torch.long
    assert quantized.shape == z.shape and loss.shape == ()
    assert torch.equal(quantized, q.indices_to_quantized(indices))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_straight_through_gradient_reaches_encoder(name):
    torch.manual_seed(0)
    options = dict(VARIANTS[name])
    q = build_quantizer(config(n_codes=16, **options))
    encoder = torch.nn.Conv2d(3, 8, 1)
    quantized, _, _, _ = q(encoder(torch.randn(2, 3, 4, 4)))
    quantized.pow(2).sum().backward()
    assert encoder.weight.grad.abs().sum() > 0


def test_straight_through_is_identity_without_projection():
    q = VectorQuantizer(4, 3)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    upstream = torch.randn(1, 3, 2, 2)
    quantized, _, _, _ = q(z)
    quantized.backward(upstream)
    assert torch.equal(z.grad, upstream)


@pytest.mark.parametrize("legacy", [False, True])
def test_loss_and_gradients_by_hand(legacy):
    beta = 0.25
    q = VectorQuantizer(2, 1, beta=beta, legacy_beta=legacy)
    set_codes(q, [[0.0], [1.0]])
    z = column([0.2, 0.9, 0.4]).requires_grad_(True)  # nearest codes 0, 1, 0
    _, indices, loss, _ = q(z)
    assert indices.flatten().tolist() == [0, 1, 0]
    mse = (0.2**2 + 0.1**2 + 0.4**2) / 3
    assert loss.item() == pytest.approx((1 + beta) * mse)
    loss.backward()
    # d/dz of w_commit * mean((z - e)^2) = w_commit * 2 (z - e) / N ; codes get w_codebook * 2 (e - z) / N
    w_codebook, w_commit = (beta, 1.0) if legacy else (1.0, beta)
    expected_z = [w_commit * 2 * d / 3 for d in (0.2, -0.1, 0.4)]
    expected_codes = [w_codebook * 2 * (-0.2 - 0.4) / 3, w_codebook * 2 * 0.1 / 3]
    assert z.grad.flatten().tolist() == pytest.approx(expected_z)
    assert q.embedding.weight.grad.flatten().tolist() == pytest.approx(expected_codes)


def test_ema_update_by_hand():
    q = VectorQuantizer(2, 1, ema=True, ema_decay=0.5)
    set_codes(q, [[0.0], [10.0]])
    q.ema_sum.copy_(q.embedding.weight)
    _, _, loss, _ = q(column([1.0, 2.0, 11.0]))  # code 0 <- 1, 2 ; code 1 <- 11
    count = [0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 1]
    sums = [0.5 * 0 + 0.5 * 3, 0.5 * 10 + 0.5 * 11]
    total, eps = sum(count), 1e-5
    expected = [s / ((c + eps) / (total + 2 * eps) * total) for s, c in zip(sums, count)]
    assert q.ema_count.tolist() == pytest.approx(count)
    assert q.embedding.weight.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.25 * (1 + 4 + 1) / 3)  # commitment term only
    assert not q.embedding.weight.requires_grad


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_uses_all_codes(ema):
    torch.manual_seed(0)
    z = torch.randn(1, 2, 4, 4)
    usage = {}
    for restart in (False, True):
        q = VectorQuantizer(8, 2, restart_dead=restart, usage_window=2, ema=ema)
        set_codes(q, [[0.0, 0.0]] + [[100.0, 100.0]] * 7)  # only code 0 is ever nearest
        if ema:
            q.ema_sum.copy_(q.embedding.weight)
        for _ in range(3):  # the window is full after 2 batches; the 3rd batch restarts
            _, indices, _, stats = q(z)
        usage[restart] = stats["usage"].item()
    assert usage == {False: 1 / 8, True: 1.0}
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in q.embedding.weight[1:]:  # restarted codes are copies of inputs (EMA moves them at most)
        assert (flat - code).norm(dim=1).min() < 1e-5 or ema


def test_usage_and_perplexity_by_hand():
    q = VectorQuantizer(4, 1, usage_window=2)
    set_codes(q, [[0.0], [10.0], [20.0], [30.0]])
    _, _, _, s1 = q(column([0.0, 0.1, -0.1, 10.0]))  # codes 0,0,0,1
    _, _, _, s2 = q(column([20.0, 21.0]))  # code 2
    _, _, _, s3 = q(column([19.0]))  # code 2
    p = [0.75, 0.25]
    assert s1["usage"].item() == 0.5
    assert s1["perplexity"].item() == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)))
    assert s2["usage"].item() == 0.75 and s2["perplexity"].item() == pytest.approx(1.0)
    assert s3["usage"].item() == 0.25  # codes 0 and 1 fell out of the 2-batch window
    q.eval()
    q(column([30.0]))
    assert q.usage_tracker.age.tolist() == [2, 2, 0, 5]  # eval leaves the window alone


def test_distances_in_fp32_under_autocast():
    torch.manual_seed(0)
    q = VectorQuantizer(64, 8)
    z = torch.randn(2, 8, 4, 4)
    _, expected, _, _ = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, indices, loss, _ = q(z)
    assert torch.equal(indices, expected) and loss.dtype == torch.float32


def test_gumbel_temperature_schedule():
    q = GumbelQuantizer(8, 4, temperature_start=1.0, temperature_end=0.1, temperature_anneal_steps=100)
    for step, expected in [(0, 1.0), (25, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))), (50, 0.55),
                           (100, 0.1), (500, 0.1)]:
        q.set_step(step)
        assert q.temperature == pytest.approx(expected)


def test_gumbel_kl_loss_and_eval_argmax():
    q = GumbelQuantizer(2, 1, kl_weight=0.5).eval()
    with torch.no_grad():
        q.proj.weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
        q.proj.bias.zero_()
    _, indices, loss, _ = q(column([1.0, -2.0]))  # logits (1, -1) and (-2, 2)
    assert indices.flatten().tolist() == [0, 1]

    def kl(a, b):
        p = [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
        return sum(x * math.log(x * 2) for x in p)

    assert loss.item() == pytest.approx(0.5 * (kl(1, -1) + kl(-2, 2)) / 2, rel=1e-5)


def test_build_quantizer_errors():
    with pytest.raises(VqtError, match="unknown quantizer.kind 'kmeans'.*choose from fsq, gumbel, vq"):
        build_quantizer(config("kmeans", n_codes=8))
    with pytest.raises(VqtError, match="unknown key 'quantizer.ema'.*option of quantizer.kind = 'vq', but "
                                       "quantizer.kind = 'gumbel'"):
        build_quantizer(config("gumbel", n_codes=8, ema=True))
    with pytest.raises(VqtError, match="unknown key 'quantizer.kl_weight'.*option of quantizer.kind = 'gumbel'"):
        build_quantizer(config("vq", n_codes=8, kl_weight=1.0))
    with pytest.raises(VqtError, match="unknown key 'quantizer.n_code'.*did you mean 'n_codes'"):
        build_quantizer(config("vq", n_code=8))


def test_build_quantizer_accepts_every_recipe_default():
    for kind, n_codes in (("vq", 1024), ("gumbel", 1024), ("fsq", 1000)):
        assert build_quantizer(QuantizerConfig(kind=kind)).n_codes == n_codes


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same initial codebook on both ranks
        q = VectorQuantizer(8, 2, ema=True, restart_dead=True, usage_window=2)
        torch.manual_seed(100 + rank)  # different data and restart draws per rank
        for _ in range(4):
            q(torch.randn(1, 2, 3, 3) + 5 * rank)
        torch.save({"codes": q.embedding.weight.detach(), "ema_count": q.ema_count,
                    "age": q.usage_tracker.age}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_codebooks_stay_identical_across_ranks(tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is unavailable")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (a["age"] == 0).any()
