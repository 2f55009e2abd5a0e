import math

import pytest
import torch
import torch.nn.functional as F

from vqtoolkit.errors import RecipeError, VqtError
from vqtoolkit.models.transformer import GPT, GPTConfig, corrupt_tokens, image_loss


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """A small GPT with large random weights, so logits are far from uniform and layers matter."""
    config = dict(vocab_size=16, block_size=32, n_layer=2, n_head=2, n_embd=16) | overrides
    gpt = GPT(GPTConfig(**config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gpt.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return gpt


def random_tokens(shape: tuple[int, ...], vocab: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def mingpt_forward(gpt: GPT, idx: torch.Tensor) -> torch.Tensor:
    """minGPT's explicit masked-softmax attention, written out, on the same weights."""
    B, T = idx.shape
    nh, C = gpt.n_head, gpt.n_embd
    x = gpt.tok_emb(idx) + gpt.pos_emb[:, :T]
    mask = torch.tril(torch.ones(T, T))
    for block in gpt.blocks:
        a = block.ln1(x)
        projections = (block.attn.key, block.attn.query, block.attn.value)
        k, q, v = (m(a).view(B, T, nh, C // nh).transpose(1, 2) for m in projections)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + block.attn.proj(y)
        x = x + block.mlp(block.ln2(x))
    return gpt.head(gpt.ln_f(x))


def test_parameter_names_match_taming_mingpt():
    gpt = GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=2, n_embd=4))
    layer = [f"blocks.0.{n}.{p}" for n in ("ln1", "ln2") for p in ("weight", "bias")]
    layer += [f"blocks.0.attn.{n}.{p}" for n in ("key", "query", "value", "proj") for p in ("weight", "bias")]
    layer += [f"blocks.0.mlp.{n}.{p}" for n in ("0", "2") for p in ("weight", "bias")]
    expected = {"tok_emb.weight", "pos_emb", "ln_f.weight", "ln_f.bias", "head.weight", *layer}
    assert set(gpt.state_dict()) == expected
    assert gpt.pos_emb.shape == (1, 4, 4)
    assert gpt.blocks[0].mlp[0].weight.shape == (16, 4)
    assert isinstance(gpt.blocks[0].mlp[1], torch.nn.GELU)


def test_drin_depth_model_has_paper_parameter_count():
    with torch.device("meta"):
        gpt = GPT(GPTConfig(vocab_size=1024, block_size=512, n_layer=24, n_head=16, n_embd=1024))
    assert sum(p.numel() for p in gpt.parameters()) == 304_932_864


def test_init_follows_mingpt():
    gpt = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32))
    assert torch.equal(gpt.pos_emb, torch.zeros(1, 8, 32))
    assert torch.equal(gpt.blocks[1].ln2.weight, torch.ones(32))
    assert torch.equal(gpt.ln_f.bias, torch.zeros(32))
    assert torch.equal(gpt.blocks[0].attn.key.bias, torch.zeros(32))
    weights = torch.cat([p.flatten() for p in (gpt.tok_emb.weight, gpt.head.weight, gpt.blocks[0].mlp[0].weight)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert weights.mean().abs().item() < 0.002


def test_head_divisibility_is_checked():
    with pytest.raises(ValueError, match="n_embd=10 must be divisible by n_head=3"):
        GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=3, n_embd=10)


def test_forward_matches_explicit_mingpt_attention():
    gpt = tiny_gpt()
    idx = random_tokens((2, 12))
    logits = gpt(idx)
    assert logits.shape == (2, 12, 16)
    torch.testing.assert_close(logits, mingpt_forward(gpt, idx), atol=1e-4, rtol=1e-4)


def test_forward_is_causal():
    gpt = tiny_gpt()
    idx = random_tokens((1, 10))
    changed = idx.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 16
    a, b = gpt(idx), gpt(changed)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_cached_forward_matches_uncached():
    gpt = tiny_gpt()
    idx = random_tokens((3, 20))
    full = gpt(idx)
    cache = gpt.new_cache(3, 20)
    parts = [gpt(idx[:, :7], cache)]  # prefix pass
    parts += [gpt(idx[:, t : t + 1], cache) for t in range(7, 12)]  # single-token steps
    parts.append(gpt(idx[:, 12:20], cache))  # a multi-token chunk after cached keys
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    # The prefix pass computes exactly what the uncached forward computes.
    assert torch.equal(parts[0], gpt(idx[:, :7]))


def test_cache_reset_reuses_buffers():
    gpt = tiny_gpt()
    idx = random_tokens((1, 9))
    cache = gpt.new_cache(1, 9)
    gpt(random_tokens((1, 9), seed=5), cache)
    cache.reset()
    assert cache.length == 0
    steps = [gpt(idx[:, :4], cache)] + [gpt(idx[:, t : t + 1], cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), gpt(idx), atol=1e-5, rtol=1e-5)


def test_sequence_limits_raise():
    gpt = tiny_gpt()
    with pytest.raises(VqtError, match="33 tokens exceeds the transformer's block_size 32"):
        gpt(random_tokens((1, 33)))
    cache = gpt.new_cache(1, 5)
    gpt(random_tokens((1, 4)), cache)
    with pytest.raises(VqtError, match="6 tokens exceeds the KV cache's max_len 5"):
        gpt(random_tokens((1, 2)), cache)


def test_optimizer_decays_only_linear_weights():
    gpt = tiny_gpt()
    opt = gpt.configure_optimizer(lr=1e-3, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-3
    names = {id(p): n for n, p in gpt.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    linear = {f"{m}.weight" for m, mod in gpt.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert decayed == linear
    assert {"pos_emb", "tok_emb.weight", "ln_f.weight", "blocks.0.ln1.bias", "blocks.1.mlp.2.bias"} <= kept
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())


def test_image_loss_covers_image_positions_only():
    logits = torch.randn(2, 3 + 5 - 1, 16, generator=torch.Generator().manual_seed(0))
    targets = random_tokens((2, 5))
    expected = F.cross_entropy(logits[:, 2:].reshape(-1, 16), targets.reshape(-1))
    torch.testing.assert_close(image_loss(logits, targets, n_prefix=3), expected)
    with pytest.raises(ValueError, match="do not match targets"):
        image_loss(logits, targets, n_prefix=2)


def test_corrupt_tokens_follows_pkeep():
    tokens = random_tokens((64, 64), vocab=8)
    assert corrupt_tokens(tokens, 1.0, 8) is tokens
    g = torch.Generator().manual_seed(0)
    noisy = corrupt_tokens(tokens, 0.0, 1000, generator=g)
    assert (noisy != tokens).float().mean() > 0.99 and noisy.max() < 1000
    half = corrupt_tokens(tokens, 0.5, 1000, generator=g)
    assert (half != tokens).float().mean().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(RecipeError, match=r"pkeep=1.5 must lie in \[0, 1\]"):
        corrupt_tokens(tokens, 1.5, 8)
