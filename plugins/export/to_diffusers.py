"""A stage-1 VQGAN as a diffusers `VQModel` folder: `config.json` and `diffusion_pytorch_model.safetensors`.

Only JSON and safetensors are written, so exporting needs no diffusers. The layers correspond one to
one (diffusers' `Encoder`/`Decoder` come from the same reference code); the quantizer needs one step of
algebra, because diffusers' `VectorQuantizer` only looks up the nearest code by Euclidean distance:

- A factorized codebook (`quantizer.codebook_dim`) projects with 1x1 convs on either side of the
  lookup. Two 1x1 convs in a row are one 1x1 conv, so `proj_in` folds into diffusers' `quant_conv`
  and `proj_out` into its `post_quant_conv` (`vq_embed_dim` = `codebook_dim`).
- An l2-normalised lookup (`quantizer.l2_normalize`) picks the code of largest cosine with z. Stored
  as unit vectors, the nearest code to the unnormalised z, argmin ||z - c||^2 = argmax z.c, is the
  same code, so diffusers' lookup needs no normalisation of z.

What only shapes training (beta, EMA, restarts, dropout) is not part of a VQModel; diffusers' own
`commit_loss` is its training quantity, not ours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from vqtoolkit.checkpoint import load_bundle
from vqtoolkit.errors import VqtError
from vqtoolkit.fileio import atomic_path, atomic_write_text, check_new
from vqtoolkit.models.quantize import VectorQuantizer
from vqtoolkit.stage1 import Stage1Model

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"

# Names inside a block: ours (the reference's) -> diffusers'.
_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


@dataclass
class ExportReport:
    """What `export_diffusers` wrote, and what a user should know about it."""

    out: Path
    source: str  # "stage1", or "stage2" when the first stage of a stage-2 bundle was exported
    n_tensors: int
    notes: list[str] = field(default_factory=list)


def check_expressible(model: Stage1Model) -> None:
    """Refuse, by name, the settings a diffusers VQModel cannot reproduce."""
    kind = model.quantizer_config.kind
    if not isinstance(model.vqgan.quantize, VectorQuantizer):
        raise VqtError(f"quantizer.kind = {kind!r} cannot be exported to diffusers: its VQModel only looks up "
                       "the nearest code (quantizer.kind = 'vq')")
    ch_mult = model.model_config.ch_mult
    if ch_mult[0] != 1:
        raise VqtError(f"model.ch_mult = {list(ch_mult)} cannot be exported to diffusers: its Encoder widens "
                       f"the input to the first level's width in conv_in, so ch_mult[0] must be 1 "
                       f"(it is {ch_mult[0]})")


def _attention_levels(model: Stage1Model) -> list[bool]:
    """Per level (finest first), whether its blocks carry attention (the Encoder's and Decoder's rule)."""
    cfg = model.model_config
    return [cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(len(cfg.ch_mult))]


def diffusers_config(model: Stage1Model) -> dict[str, Any]:
    """The VQModel `config.json` of this VQGAN."""
    cfg, quantizer = model.model_config, model.vqgan.quantize
    n_codes, lookup_dim = quantizer.embedding.weight.shape  # codebook_dim, or embed_dim without one
    attention = _attention_levels(model)
    return {
        "_class_name": "VQModel",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)],
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": cfg.z_channels,
        "sample_size": cfg.resolution,
        "num_vq_embeddings": n_codes,
        "norm_num_groups": cfg.norm_groups,
        "vq_embed_dim": lookup_dim,
        "scaling_factor": 1.0,  # latents as the VQGAN makes them; nothing measured their spread
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": True,  # decode(indices, force_not_quantize=True) looks codes up
        "force_upcast": False,
    }


def _rename(key: str, n_levels: int) -> str:
    """One encoder/decoder tensor name, ours -> diffusers'."""
    part, rest = key.split(".", 1)
    rest = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", rest)
    rest = rest.replace("mid.attn_1.", "mid_block.attentions.0.").replace("norm_out.", "conv_norm_out.")
    rest = re.sub(r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", rest)
    rest = re.sub(r"^down\.(\d+)\.attn\.", r"down_blocks.\1.attentions.", rest)
    rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)
    # diffusers lists the decoder's levels in the order they run: coarsest first.
    up = re.match(r"^up\.(\d+)\.(block|attn|upsample)\.(.*)$", rest)
    if up:
        inner = {"block": "resnets.", "attn": "attentions.", "upsample": "upsamplers.0."}[up[2]]
        rest = f"up_blocks.{n_levels - 1 - int(up[1])}.{inner}{up[3]}"
    block = re.match(r"^(.*\.(resnets|attentions)\.\d+)\.(\w+)\.(weight|bias)$", rest)
    if block:
        names = _RESNET if block[2] == "resnets" else _ATTENTION
        rest = f"{block[1]}.{names.get(block[3], block[3])}.{block[4]}"
    return f"{part}.{rest}"


def _compose(outer_w: Tensor, outer_b: Tensor, inner_w: Tensor, inner_b: Tensor) -> tuple[Tensor, Tensor]:
    """outer(inner(x)) of two 1x1 convs as one 1x1 conv, computed in float64."""
    wo, wi = outer_w.double().flatten(1), inner_w.double().flatten(1)  # (out, mid), (mid, in)
    w, b = wo @ wi, wo @ inner_b.double() + outer_b.double()
    return w[:, :, None, None].to(inner_w.dtype), b.to(inner_b.dtype)


def diffusers_tensors(model: Stage1Model) -> dict[str, Tensor]:
    """The VQModel state dict of this VQGAN (see the module docstring for the quantizer)."""
    vq, quantizer = model.vqgan, model.vqgan.quantize
    n_levels = len(model.model_config.ch_mult)
    out: dict[str, Tensor] = {}
    for key, value in vq.state_dict().items():
        if key.startswith(("encoder.", "decoder.")):
            name = _rename(key, n_levels)
            if ".attentions." in name and value.ndim == 4:  # diffusers' attention projections are Linear
                value = value.flatten(1)
            out[name] = value
    quant_w, quant_b = vq.quant_conv.weight, vq.quant_conv.bias
    post_w, post_b = vq.post_quant_conv.weight, vq.post_quant_conv.bias
    if quantizer.proj_in is not None:
        quant_w, quant_b = _compose(quantizer.proj_in.weight, quantizer.proj_in.bias, quant_w, quant_b)
        post_w, post_b = _compose(post_w, post_b, quantizer.proj_out.weight, quantizer.proj_out.bias)
    codes = quantizer.embedding.weight
    if quantizer.l2_normalize:
        codes = F.normalize(codes.float(), dim=1).to(codes.dtype)
    out.update({"quant_conv.weight": quant_w, "quant_conv.bias": quant_b,
                "post_quant_conv.weight": post_w, "post_quant_conv.bias": post_b,
                "quantize.embedding.weight": codes})
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


def load_first_stage(path: str | Path) -> tuple[Stage1Model, str]:
    """The VQGAN of a stage-1 bundle, or the first stage a stage-2 bundle carries; and the bundle's kind."""
    bundle = load_bundle(path)
    if bundle.kind == "stage1":
        return Stage1Model.from_bundle(bundle), "stage1"
    if bundle.kind == "stage2":
        return Stage1Model.from_bundle(bundle, "vqgan", "first_stage"), "stage2"
    raise VqtError(f"{path} is a {bundle.kind or 'unknown'} bundle; export needs a stage-1 (VQGAN) bundle, "
                   "or a stage-2 bundle whose first stage to export")


def export_diffusers(model_path: str | Path, out: str | Path, force: bool = False) -> ExportReport:
    """Write `out/config.json` and `out/diffusion_pytorch_model.safetensors` for `VQModel.from_pretrained(out)`.

    Each file is written atomically, the weights first: `config.json` is removed before and written last,
    so a folder that has one is complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VqtError(f"{out} exists and is not a folder; export writes a folder (config.json and weights)")
    for name in (WEIGHTS, CONFIG):
        check_new(out / name, force)
    model, source = load_first_stage(model_path)
    check_expressible(model)
    tensors, config = diffusers_tensors(model), diffusers_config(model)
    (out / CONFIG).unlink(missing_ok=True)
    with atomic_path(out / WEIGHTS, force=force) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n", force=force)
    report = ExportReport(out, source, len(tensors))
    if source == "stage2":
        report.notes.append(f"exported the first stage (VQGAN) of stage-2 bundle {model_path}; "
                            "its transformer and any condition stage are not part of a VQModel")
    tile = model.model_config.encode_tile
    if tile:
        report.notes.append(f"model.encode_tile = {tile}: vqt encodes larger images in tiles, diffusers "
                            "encodes them whole, so codes of images larger than the tile may differ")
    return report
