"""Codebook usage of quantizer settings on a tiny VQGAN (CPU, a few minutes).

Trains the same tiny autoencoder (ch 32, ch_mult 1,2,2, 256 codes) with an L1 + codebook loss on random
smooth images, once per quantizer setting, and prints the fraction of codes in use (over the last
`usage_window` training batches, and on held-out images), the perplexity and the final L1. The figures
decide the default quantizer in the recipes.

    python benchmarks/codebook_usage.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vqtoolkit.metrics import codebook_stats
from vqtoolkit.quantizer_options import build_quantizer
from vqtoolkit.recipes import QuantizerConfig
from vqtoolkit.models.vqgan import VQGAN

SETTINGS = {
    "reference (d=64, legacy beta)": dict(codebook_dim=0, l2_normalize=False, legacy_beta=True,
                                          restart_dead=False),
    "factorized d=8 + l2": dict(codebook_dim=8, l2_normalize=True, restart_dead=False),
    "factorized d=8 + l2 + restart": dict(codebook_dim=8, l2_normalize=True, restart_dead=True),
    "reference + restart": dict(codebook_dim=0, l2_normalize=False, legacy_beta=True, restart_dead=True),
}


def smooth_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random colour fields: 4x4 noise upsampled bicubically, in [-1, 1]; (n, 3, size, size)."""
    coarse = torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def run(name: str, options: dict, steps: int, seed: int, batch: int = 16, size: int = 32) -> dict:
    torch.manual_seed(seed)
    quantizer = build_quantizer(QuantizerConfig(embed_dim=64, options=dict(n_codes=256, usage_window=100, **options)))
    model = VQGAN(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=64,
                  in_channels=3, out_channels=3, dropout=0.0, resolution=size, quantizer=quantizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3, betas=(0.5, 0.9))
    data = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        x = smooth_images(batch, size, data)
        recon, qloss, _, stats = model(x)
        l1 = (recon - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        (l1 + qloss).backward()
        optimizer.step()
    model.eval()
    held_out = smooth_images(256, size, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        _, indices, _, _ = model.encode(held_out)
    usage, perplexity = codebook_stats(torch.bincount(indices.flatten(), minlength=256))
    return {"setting": name, "train_usage": stats["usage"].item(), "eval_usage": usage.item(),
            "eval_perplexity": perplexity.item(), "final_l1": l1.item(),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'setting':34s} {'train usage':>11s} {'eval usage':>10s} {'perplexity':>10s} "
          f"{'final L1':>8s} {'time':>6s}")
    for name, options in SETTINGS.items():
        r = run(name, options, args.steps, args.seed)
        print(f"{r['setting']:34s} {r['train_usage']:11.1%} {r['eval_usage']:10.1%} "
              f"{r['eval_perplexity']:10.1f} {r['final_l1']:8.4f} {r['seconds']:5.0f}s", flush=True)


if __name__ == "__main__":
    main()
