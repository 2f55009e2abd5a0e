"""Stage 1 as an object: a VQGAN together with the configs that rebuild it (a stage-1 bundle).

    from vqtoolkit import Stage1Model
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
from .models.vqgan import VQGAN
from .quantizer_options import build_quantizer, complete_quantizer, quantizer_table, read_stored
from .recipes import ModelConfig, QuantizerConfig, section_from_dict
from .tiles import encode_tiled


def build_vqgan(model: ModelConfig, quantizer: QuantizerConfig) -> VQGAN:
    """The VQGAN of a recipe's [model] and [quantizer] sections (the quantizer from its plugin)."""
    layers = {k: v for k, v in dataclasses.asdict(model).items() if k != "encode_tile"}  # how to run it, not a layer
    return VQGAN(**layers, quantizer=build_quantizer(quantizer))


class Stage1Model:
    """A VQGAN together with the configs that rebuild it (what a stage-1 bundle holds)."""

    def __init__(self, vqgan: VQGAN, model: ModelConfig, quantizer: QuantizerConfig,
                 condition: dict[str, Any] | None = None) -> None:
        self.vqgan = vqgan
        self.model_config = model
        self.quantizer_config = quantizer  # its options in full (`build` and `from_bundle` complete them)
        self.condition = condition or {}  # set for a condition stage (e.g. a depth VQGAN)

    @classmethod
    def build(cls, model: ModelConfig, quantizer: QuantizerConfig,
              condition: dict[str, Any] | None = None, where: str = "recipe") -> Stage1Model:
        quantizer = complete_quantizer(quantizer, where)
        return cls(build_vqgan(model, quantizer), model, quantizer, condition)

    @classmethod
    def from_bundle(cls, bundle: Bundle, prefix: str = "vqgan", config_key: str = "") -> Stage1Model:
        """Rebuild from a bundle; `config_key` selects a nested config (stage-2 bundles)."""
        config = bundle.config.get(config_key, {}) if config_key else bundle.config
        where = f"{bundle.path} (config{'.' + config_key if config_key else ''})"
        if "model" not in config or "quantizer" not in config:
            raise CheckpointError(f"{where} lacks the model/quantizer sections that rebuild the VQGAN")
        model = section_from_dict(ModelConfig, config["model"], where)
        quantizer = read_stored(config["quantizer"], where)
        instance = cls.build(model, quantizer, config.get("condition") or None, where)
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
                               "quantizer": quantizer_table(self.quantizer_config)}
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
        return self.vqgan.quantize.n_codes

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
        images, tile = images.to(self.device), self.model_config.encode_tile // self.factor
        if tile and (h // self.factor > tile or w // self.factor > tile):
            return encode_tiled(self._encode, images, self.factor, tile)
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        _, indices, _, _ = self.vqgan.encode(images.contiguous(memory_format=torch.channels_last))
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
