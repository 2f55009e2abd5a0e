"""Stage-1 figures over a dataset: PSNR, SSIM, LPIPS (when its weights are here), codebook use."""

from __future__ import annotations

from typing import Any

import torch

from .errors import VqtError
from .images import to_uint8
from .losses import load_lpips
from .metrics import codebook_stats, psnr, ssim
from .stage1 import Stage1Model


def _lpips_or_none(device: torch.device) -> torch.nn.Module | None:
    """LPIPS when its VGG weights are on this machine; None (reported as null) otherwise."""
    try:
        return load_lpips("vgg").to(device)
    except VqtError:
        return None


@torch.no_grad()
def evaluate(model: Stage1Model, dataset: Any, batch_size: int = 8,
             progress: Any = None, n_show: int = 4) -> dict[str, Any]:
    """PSNR, SSIM (data range 2, images in [-1, 1]), LPIPS, codebook usage and perplexity.

    Returns the figures plus `best` and `worst`: lists of (name, psnr, input, reconstruction) as uint8
    arrays, for a picture of where the model does well and badly.
    """
    vqgan, device = model.vqgan.eval(), model.device
    lpips_fn = _lpips_or_none(device)
    counts = torch.zeros(model.n_codes, dtype=torch.long)
    psnrs, ssims, lpipss, ranked = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it["image"] for it in items]).to(device)
        recon, _, indices, _ = vqgan(x)
        recon = recon.clamp(-1, 1)
        p = psnr(recon, x).reshape(-1).cpu()
        psnrs.append(p)
        ssims.append(ssim(recon, x).reshape(-1).cpu())
        if lpips_fn is not None:
            lpipss.append(lpips_fn(recon, x).reshape(-1).cpu())
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.n_codes)
        ranked += [(float(p[i]), it["name"], to_uint8(x[i]), to_uint8(recon[i])) for i, it in enumerate(items)]
        ranked = sorted(ranked, key=lambda r: r[0])
        ranked = ranked[:n_show] + ranked[-n_show:] if len(ranked) > 2 * n_show else ranked
        if progress is not None:
            progress(len(items))
    usage, perplexity = codebook_stats(counts)
    return {
        "n": len(dataset),
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "ssim_data_range": 2.0,
        "lpips": float(torch.cat(lpipss).mean()) if lpipss else None,
        "codebook_usage": float(usage),
        "perplexity": float(perplexity),
        "worst": [(name, score, a, b) for score, name, a, b in ranked[:n_show]],
        "best": [(name, score, a, b) for score, name, a, b in ranked[::-1][:n_show]],
    }
