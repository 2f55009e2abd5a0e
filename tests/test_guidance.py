"""Classifier-free guidance: GuidedGPT's logits are u + s·(c − u), cached or not."""

import torch

from vqtoolkit.sampling import GuidedGPT
from vqtoolkit.models.transformer import GPT, GPTConfig


def test_guided_logits_match_hand_computation():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(12, 10, 2, 2, 16)).eval()
    null = torch.tensor([11])
    guided = GuidedGPT(gpt, null, scale=3.0)
    idx = torch.tensor([[4, 1, 2, 3], [7, 5, 6, 0]])  # class token first, then image tokens
    uncond_idx = idx.clone()
    uncond_idx[:, 0] = 11
    with torch.no_grad():
        c, u = gpt(idx), gpt(uncond_idx)
        torch.testing.assert_close(guided(idx), u + 3.0 * (c - u))
        cache = guided.new_cache(2)
        first = guided(idx[:, :3], cache)  # the prefix pass replaces the class token
        step = guided(idx[:, 3:], cache)  # cached steps see the null prefix in their cache
    torch.testing.assert_close(first, (u + 3.0 * (c - u))[:, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, (u + 3.0 * (c - u))[:, 3:], atol=1e-5, rtol=1e-5)
