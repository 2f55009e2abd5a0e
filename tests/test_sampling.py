import math

import pytest
import torch

from vqtoolkit.errors import VqtError
from vqtoolkit import sampling
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.sampling import (
    sample_logits,
    sample_raster,
    sample_sliding,
    sample_sliding_reference,
    window_start,
)


def tiny_gpt(seed: int = 0, block_size: int = 32) -> GPT:
    """A small GPT with large random matrices, so logits are far from uniform and the argmax follows
    the context. Biases and LayerNorms keep their initial values: random ones as well would fix the
    argmax whatever the context (token 13 for 200 of 200 contexts), and greedy comparisons would
    then pass with a wrong context."""
    gpt = GPT(GPTConfig(vocab_size=16, block_size=block_size, n_layer=2, n_head=2, n_embd=16)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return gpt


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prefix_for_window(top: int, left: int) -> torch.Tensor:
    """Condition tokens that depend on the window position, as a cropped condition grid would."""
    return torch.tensor([[top, left, (3 * top + left) % 16], [left, top, 7]])  # (2, 3)


# sample_logits -------------------------------------------------------------------------------


def test_top_k_one_is_greedy():
    logits = torch.randn(5, 16, generator=gen())
    assert torch.equal(sample_logits(logits, top_k=1, generator=gen(1)), logits.argmax(-1))


def test_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log().expand(4000, 4)
    top_k = sample_logits(logits, top_k=2, generator=gen())
    assert set(top_k.tolist()) == {1, 3}
    # Nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 is; tokens ranked lower are dropped.
    top_p = sample_logits(logits, top_p=0.7, generator=gen())
    assert set(top_p.tolist()) == {1, 3}
    assert (top_p == 1).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)
    assert set(sample_logits(logits, top_p=0.5, generator=gen()).tolist()) == {1}
    # Temperature 0.5 squares the probabilities before renormalising.
    cold = sample_logits(logits, temperature=0.5, generator=gen())
    expected = 0.5**2 / (probs**2).sum().item()
    assert (cold == 1).float().mean().item() == pytest.approx(expected, abs=0.03)
    # top_k beyond the vocabulary keeps everything.
    assert set(sample_logits(logits, top_k=100, generator=gen()).tolist()) == {0, 1, 2, 3}


def test_same_generator_seed_gives_same_draws():
    logits = torch.randn(3, 16, generator=gen())
    assert torch.equal(sample_logits(logits, generator=gen(4)), sample_logits(logits, generator=gen(4)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"top_k": 0}, "top_k must be >= 1, got 0"),
        ({"top_p": 0.0}, r"top_p must lie in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must lie in \(0, 1\], got 1.5"),
    ],
)
def test_sample_logits_validates_arguments(kwargs, message):
    with pytest.raises(VqtError, match=message):
        sample_logits(torch.zeros(1, 4), **kwargs)


# raster ---------------------------------------------------------------------------------------


def test_raster_greedy_matches_argmax_loop_with_and_without_cache():
    gpt = tiny_gpt()
    prefix = torch.tensor([[3, 1], [4, 1]])
    seq = prefix
    for _ in range(20):
        seq = torch.cat([seq, gpt(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    cached = sample_raster(gpt, prefix, 20, top_k=1, generator=gen())
    uncached = sample_raster(gpt, prefix, 20, top_k=1, generator=gen(), use_cache=False)
    assert torch.equal(cached, seq[:, 2:])
    assert torch.equal(uncached, seq[:, 2:])


def test_raster_samples_reproducibly_and_reports_progress():
    gpt = tiny_gpt().train()
    calls = []
    out = sample_raster(gpt, torch.tensor([[0]]), 31, generator=gen(3), progress=lambda *a: calls.append(a))
    assert out.shape == (1, 31) and out.dtype == torch.long and 0 <= out.min() and out.max() < 16
    assert torch.equal(out, sample_raster(gpt, torch.tensor([[0]]), 31, generator=gen(3)))
    assert calls == [(k, 31) for k in range(1, 32)]
    assert gpt.training  # the caller's mode is restored


def test_raster_refuses_sequences_beyond_block_size():
    with pytest.raises(VqtError, match="2 prefix \\+ 32 image tokens exceed the transformer's block_size 32"):
        sample_raster(tiny_gpt(), torch.tensor([[0, 1]]), 32)
    with pytest.raises(VqtError, match="prefix must be a \\(batch, n >= 1\\) long tensor"):
        sample_raster(tiny_gpt(), torch.zeros(1, 0, dtype=torch.long), 4)


# sliding windows ------------------------------------------------------------------------------


def taming_local(i: int, n: int) -> int:
    """Taming's scripts/sample_conditional.py arithmetic for its 16-token window, verbatim."""
    if i <= 8:
        return i
    if n - i < 8:
        return 16 - (n - i)
    return 8


@pytest.mark.parametrize("n", [16, 17, 25, 36, 64])
def test_window_start_equals_taming_for_its_window(n):
    assert [window_start(i, n, 16) for i in range(n)] == [i - taming_local(i, n) for i in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_window_start_keeps_odd_and_even_windows_inside_the_grid(size):
    for n in range(size, size + 9):
        for i in range(n):
            start = window_start(i, n, size)
            assert 0 <= start <= n - size and start <= i < start + size


@pytest.mark.parametrize("window", [(4, 4), (3, 5)])
def test_stride_one_reproduces_reference_token_for_token(window):
    gpt = tiny_gpt()
    ref = sample_sliding_reference(gpt, prefix_for_window, (7, 11), window, generator=gen(7))
    ours = sample_sliding(gpt, prefix_for_window, (7, 11), window, stride=1, generator=gen(7))
    assert ref.shape == (2, 7, 11)
    assert torch.equal(ours, ref)


def test_reference_sees_exactly_the_window_before_the_target():
    """Hand-built check of one step: the reference feeds prefix + window tokens up to the target."""
    gpt = tiny_gpt()
    seen = []
    forward = gpt.forward
    gpt.forward = lambda idx, cache=None: seen.append(idx.clone()) or forward(idx, cache)
    grid = sample_sliding_reference(gpt, prefix_for_window, (7, 11), (3, 5), top_k=1)
    # Target (5, 10): top = window_start(5, 7, 3) = 4, left = window_start(10, 11, 5) = 6.
    expected = torch.cat([prefix_for_window(4, 6), grid[:, 4, 6:11], grid[:, 5, 6:10]], dim=1)
    assert torch.equal(seen[5 * 11 + 10], expected)


def placement_reference(gpt, grid, window, stride):
    """Greedy sliding sampling, uncached, one forward per token, with the documented stride rule."""
    (H, W), (h, w) = grid, window
    idx = torch.zeros(2, H, W, dtype=torch.long)
    for i in range(H):
        top = window_start(i, H, h)
        for j in range(W):
            a = j - j % stride
            left = window_start(a + stride // 2, W, w)
            assert 0 <= left <= W - w and left <= j < left + w
            seq = torch.cat(
                [prefix_for_window(top, left), idx[:, top:i, left : left + w].reshape(2, -1), idx[:, i, left:j]], dim=1
            )
            idx[:, i, j] = gpt(seq)[:, -1].argmax(-1)
    return idx


@pytest.mark.parametrize("window, stride", [((4, 4), 2), ((4, 4), 3), ((4, 4), 4), ((3, 5), 2), ((3, 5), 5)])
def test_strided_cached_sampling_follows_the_placement_rule(window, stride):
    gpt = tiny_gpt()
    windows, calls = [], []

    def recording_prefix(top, left):
        windows.append((top, left))
        return prefix_for_window(top, left)

    out = sample_sliding(
        gpt, recording_prefix, (7, 11), window, stride=stride, top_k=1, progress=lambda *a: calls.append(a)
    )
    assert torch.equal(out, placement_reference(gpt, (7, 11), window, stride))
    assert calls == [(k, 77) for k in range(1, 78)]  # every token exactly once, in raster order
    assert len(windows) == 7 * math.ceil(11 / stride)  # one forward with a fresh prefix per placement
    assert all(0 <= t <= 7 - window[0] and 0 <= l <= 11 - window[1] for t, l in windows)


def test_recurring_windows_feed_only_their_new_tokens(monkeypatch):
    """Grid 3x4, window 2x2, stride 1, 3 prefix tokens. Tops by row: 0, 0, 1; lefts by column: 0, 0, 1, 2.
    Tokens fed per placement, by hand: row 0: 3, then 1 (window (0, 0) again), 4, 4; row 1 reuses all
    four windows of top 0: 1, 1, 2, 2; row 2 has a new top: 5, 1, 6, 6. Without reuse every
    placement feeds its whole context: 3 4 4 4 / 5 6 6 6 / 5 6 6 6."""
    gpt = tiny_gpt()
    fed = []
    forward = gpt.forward
    gpt.forward = lambda idx, cache=None: fed.append(idx.shape[1]) or forward(idx, cache)
    reused = sample_sliding(gpt, prefix_for_window, (3, 4), (2, 2), stride=1, top_k=1)
    assert fed == [3, 1, 4, 4, 1, 1, 2, 2, 5, 1, 6, 6]
    fed.clear()
    monkeypatch.setattr(sampling, "_free_bytes", lambda device: 0)  # no room to keep any window
    recomputed = sample_sliding(gpt, prefix_for_window, (3, 4), (2, 2), stride=1, top_k=1)
    assert fed == [3, 4, 4, 4, 5, 6, 6, 6, 5, 6, 6, 6]
    assert torch.equal(reused, recomputed)
    assert torch.equal(reused, sample_sliding_reference(gpt, prefix_for_window, (3, 4), (2, 2), top_k=1))


def test_sliding_on_a_grid_equal_to_the_window_is_raster_sampling():
    gpt = tiny_gpt()
    sliding = sample_sliding(gpt, lambda t, l: torch.tensor([[5]]), (4, 4), (4, 4), stride=4, top_k=1)
    raster = sample_raster(gpt, torch.tensor([[5]]), 16, top_k=1)
    assert torch.equal(sliding.reshape(1, 16), raster)


@pytest.mark.parametrize(
    "grid, window, stride, message",
    [
        ((3, 11), (4, 4), 1, "grid 3x11 must be at least as large as the window 4x4"),
        ((7, 11), (4, 4), 5, "window stride must lie in 1..4 \\(the window width\\), got 5"),
        ((7, 11), (4, 4), 0, "window stride must lie in 1..4"),
        ((7, 11), (5, 7), 1, "3 prefix tokens \\+ a 5x7 window need 37 positions, more than .* block_size 32"),
    ],
)
def test_sliding_validates_its_arguments(grid, window, stride, message):
    with pytest.raises(VqtError, match=message):
        sample_sliding(tiny_gpt(), prefix_for_window, grid, window, stride=stride)


def test_sliding_rejects_a_prefix_whose_batch_changes():
    prefixes = iter([torch.zeros(2, 1, dtype=torch.long)] + [torch.zeros(1, 1, dtype=torch.long)] * 100)
    with pytest.raises(VqtError, match="prefix batch size changed from 2 to 1"):
        sample_sliding_reference(tiny_gpt(), lambda t, l: next(prefixes), (4, 5), (4, 4))
