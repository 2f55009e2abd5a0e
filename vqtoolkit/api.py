"""The Python API beside the CLI: load a stage-1 bundle, encode images to indices, decode them.

    from vqtoolkit.api import Stage1Model
    model = Stage1Model.load("runs/quickstart/last.safetensors")
    codes = model.encode(images)          # (B, 3, H, W) in [-1, 1] -> (B, H/f, W/f) int64
    recon = model.decode(codes)           # -> (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Bundle, load_bundle, load_state, module_tensors, save_bundle
from .errors import CheckpointError, ImageError
from .models.quantize import build_quantizer
from .models.vqgan import VQGAN
from .recipes import ModelConfig, QuantizerConfig, section_from_dict


def build_vqgan(model: ModelConfig, quantizer: QuantizerConfig) -> VQGAN:
    return VQGAN(**dataclasses.asdict(model), quantizer=build_quantizer(**dataclasses.asdict(quantizer)))


class Stage1Model:
    """A VQGAN together with the configs that rebuild it (what a stage-1 bundle holds)."""

    def __init__(self, vqgan: VQGAN, model: ModelConfig, quantizer: QuantizerConfig,
                 condition: dict[str, Any] | None = None) -> None:
        self.vqgan = vqgan
        self.model_config = model
        self.quantizer_config = quantizer
        self.condition = condition or {}  # set for a condition stage (e.g. a depth VQGAN)

    @classmethod
    def build(cls, model: ModelConfig, quantizer: QuantizerConfig,
              condition: dict[str, Any] | None = None) -> Stage1Model:
        return cls(build_vqgan(model, quantizer), model, quantizer, condition)

    @classmethod
    def from_bundle(cls, bundle: Bundle, prefix: str = "vqgan", config_key: str = "") -> Stage1Model:
        """Rebuild from a bundle; `config_key` selects a nested config (stage-2 bundles)."""
        config = bundle.config.get(config_key, {}) if config_key else bundle.config
        where = f"{bundle.path} (config{'.' + config_key if config_key else ''})"
        if "model" not in config or "quantizer" not in config:
            raise CheckpointError(f"{where} lacks the model/quantizer sections that rebuild the VQGAN")
        model = section_from_dict(ModelConfig, config["model"], where)
        quantizer = section_from_dict(QuantizerConfig, config["quantizer"], where)
        instance = cls.build(model, quantizer, config.get("condition") or None)
        load_state(instance.vqgan, bundle.namespace(prefix), f"{bundle.path} ({prefix}.*)")
        # channels_last: oneDNN's and cuDNN's faster convolution layout (benchmarks/stage1.py).
        instance.vqgan.eval().to(memory_format=torch.channels_last)
        return instance

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Stage1Model:
        instance = cls.from_bundle(load_bundle(path, expect_kind="stage1"))
        instance.vqgan.to(device)
        return instance

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": dataclasses.asdict(self.model_config),
                               "quantizer": dataclasses.asdict(self.quantizer_config)}
        if self.condition:
            out["condition"] = self.condition
        return out

    def tensors(self, prefix: str = "vqgan") -> dict[str, torch.Tensor]:
        return module_tensors(prefix, self.vqgan)

    def save(self, path: str | Path, force: bool = False) -> None:
        save_bundle(path, self.tensors(), kind="stage1", config=self.config(),
                    condition=self.condition, force=force)

    @property
    def factor(self) -> int:
        return self.vqgan.factor

    @property
    def n_codes(self) -> int:
        return self.quantizer_config.n_codes

    @property
    def device(self) -> torch.device:
        return next(self.vqgan.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, H/f, W/f) int64 code indices."""
        channels = self.model_config.in_channels
        if images.ndim != 4 or images.shape[1] != channels:
            raise ImageError(f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ImageError(f"image size {w}x{h} is not a multiple of the model's factor {self.factor}")
        _, indices, _, _ = self.vqgan.encode(images.to(self.device).contiguous(memory_format=torch.channels_last))
        return indices

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, C, h·f, w·f) images in [-1, 1]."""
        if indices.ndim != 3:
            raise ImageError(f"expected codes of shape (B, h, w), got {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_codes):
            raise ImageError(f"codes hold values in [{int(indices.min())}, {int(indices.max())}], "
                             f"outside this model's codebook [0, {self.n_codes - 1}]")
        return self.vqgan.decode_indices(indices.to(self.device)).clamp(-1, 1)


def _lpips_or_none(device: torch.device) -> torch.nn.Module | None:
    """LPIPS when its VGG weights are on this machine; None (reported as null) otherwise."""
    from .errors import VqtError
    from .losses import load_lpips

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
    from .images import to_uint8
    from .metrics import codebook_stats, psnr, ssim

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


def encode_files(images: list[str], outputs: list[Path], model_path: str | Path, *,
                 fit: str | None = None, device: str = "cpu", progress: Any = None,
                 force: bool = False) -> None:
    """Encode each image file to a `.npy` grid of indices (h×w), one output per image."""
    from .fileio import all_or_nothing
    from .images import check_size, crop_or_pad_to_multiple, load_image, save_codes, to_tensor

    model = Stage1Model.load(model_path, device)
    channels = model.model_config.in_channels
    with all_or_nothing() as written:
        for src, dst in zip(images, outputs):
            arr = load_image(src, channels=channels)
            if fit:
                arr = crop_or_pad_to_multiple(arr, model.factor, mode=fit)
            else:
                check_size(arr.shape[0], arr.shape[1], model.factor, name=src)
            codes = model.encode(to_tensor(arr)[None])[0]  # (h, w)
            written.append(save_codes(codes.cpu().numpy(), dst, force=force))
            if progress is not None:
                progress(1)


def decode_files(codes: list[str], outputs: list[Path], model_path: str | Path, *,
                 device: str = "cpu", progress: Any = None, force: bool = False) -> int:
    """Decode `.npy` code grids to PNG; an N×h×w file becomes OUT-stem_0000.png, ... Returns the count."""
    import numpy as np

    from .fileio import all_or_nothing, check_new
    from .images import load_codes, save_png, to_uint8

    model = Stage1Model.load(model_path, device)
    with all_or_nothing() as written:
        for src, dst in zip(codes, outputs):
            grid = load_codes(src, n_codes=model.n_codes)
            batch = torch.from_numpy(np.asarray(grid, dtype=np.int64))
            if batch.ndim == 2:
                targets = [dst]
                batch = batch[None]  # (1, h, w)
            else:
                targets = [dst.with_name(f"{dst.stem}_{i:04d}.png") for i in range(batch.shape[0])]
                for t in targets:
                    check_new(t, force)
            for start in range(0, batch.shape[0], 8):
                images = model.decode(batch[start:start + 8])
                for img, target in zip(images, targets[start:start + 8]):
                    written.append(save_png(to_uint8(img), target, force=force))
            if progress is not None:
                progress(1)
    return len(written)


def __getattr__(name: str) -> Any:
    """`from vqtoolkit.api import Stage2Model`: re-exported lazily, since it builds on Stage1Model."""
    if name == "Stage2Model":
        from .generator import Stage2Model

        return Stage2Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
