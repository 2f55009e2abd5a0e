"""vqt convert: taming-transformers checkpoints load without running their code and give the same numbers.

The reference parameter layout is written out here by hand (tiny sizes), saved the way Lightning saves it,
converted, loaded with our loaders, and compared with values computed from the stored tensors with plain
tensor ops.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vqtoolkit.api import Stage1Model
from vqtoolkit.checkpoint import load_bundle, load_state
from vqtoolkit.errors import CheckpointError, RecipeError, VqtError
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit_plugins.taming.convert import convert_checkpoint
from vqtoolkit_plugins.taming.safe_pickle import Placeholder, load_checkpoint

# ---- the reference layout, by hand --------------------------------------------------------------


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g) * 0.2


def _resnet(sd: dict, g: torch.Generator, p: str, c_in: int, c_out: int) -> None:
    sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"] = 1 + _rand(g, c_in), _rand(g, c_in)
    sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"] = _rand(g, c_out, c_in, 3, 3), _rand(g, c_out)
    sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"] = 1 + _rand(g, c_out), _rand(g, c_out)
    sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"] = _rand(g, c_out, c_out, 3, 3), _rand(g, c_out)
    if c_in != c_out:
        sd[f"{p}.nin_shortcut.weight"] = _rand(g, c_out, c_in, 1, 1)
        sd[f"{p}.nin_shortcut.bias"] = _rand(g, c_out)


def _attn(sd: dict, g: torch.Generator, p: str, c: int) -> None:
    sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"] = 1 + _rand(g, c), _rand(g, c)
    for name in ("q", "k", "v", "proj_out"):
        sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"] = _rand(g, c, c, 1, 1), _rand(g, c)


def ref_vqgan(prefix: str = "", *, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2), nrb: int = 1,
              attn_levels: tuple[int, ...] = (1,), in_ch: int = 3, out_ch: int = 3, z: int = 32,
              embed_dim: int = 8, n_codes: int = 16, gumbel: bool = False, loss: bool = True,
              seed: int = 0) -> dict[str, Tensor]:
    """taming VQModel / GumbelVQ state dict: encoder/decoder of diffusionmodules.model, quantizer, loss."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    mults = (1, *ch_mult)
    sd["encoder.conv_in.weight"], sd["encoder.conv_in.bias"] = _rand(g, ch, in_ch, 3, 3), _rand(g, ch)
    for i, mult in enumerate(ch_mult):
        c_in = ch * mults[i]
        for j in range(nrb):
            _resnet(sd, g, f"encoder.down.{i}.block.{j}", c_in, ch * mult)
            c_in = ch * mult
            if i in attn_levels:
                _attn(sd, g, f"encoder.down.{i}.attn.{j}", c_in)
        if i != len(ch_mult) - 1:
            sd[f"encoder.down.{i}.downsample.conv.weight"] = _rand(g, c_in, c_in, 3, 3)
            sd[f"encoder.down.{i}.downsample.conv.bias"] = _rand(g, c_in)
    top = ch * ch_mult[-1]
    for part in ("encoder", "decoder"):
        _resnet(sd, g, f"{part}.mid.block_1", top, top)
        _attn(sd, g, f"{part}.mid.attn_1", top)
        _resnet(sd, g, f"{part}.mid.block_2", top, top)
    sd["encoder.norm_out.weight"], sd["encoder.norm_out.bias"] = 1 + _rand(g, top), _rand(g, top)
    sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"] = _rand(g, z, top, 3, 3), _rand(g, z)
    sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"] = _rand(g, top, z, 3, 3), _rand(g, top)
    c_in = top
    for i in reversed(range(len(ch_mult))):
        for j in range(nrb + 1):
            _resnet(sd, g, f"decoder.up.{i}.block.{j}", c_in, ch * ch_mult[i])
            c_in = ch * ch_mult[i]
            if i in attn_levels:
                _attn(sd, g, f"decoder.up.{i}.attn.{j}", c_in)
        if i != 0:
            sd[f"decoder.up.{i}.upsample.conv.weight"] = _rand(g, c_in, c_in, 3, 3)
            sd[f"decoder.up.{i}.upsample.conv.bias"] = _rand(g, c_in)
    sd["decoder.norm_out.weight"], sd["decoder.norm_out.bias"] = 1 + _rand(g, ch), _rand(g, ch)
    sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"] = _rand(g, out_ch, ch, 3, 3), _rand(g, out_ch)
    sd["quant_conv.weight"], sd["quant_conv.bias"] = _rand(g, embed_dim, z, 1, 1), _rand(g, embed_dim)
    sd["post_quant_conv.weight"], sd["post_quant_conv.bias"] = _rand(g, z, embed_dim, 1, 1), _rand(g, z)
    if gumbel:
        sd["quantize.proj.weight"] = _rand(g, n_codes, embed_dim, 1, 1)
        sd["quantize.proj.bias"] = _rand(g, n_codes)
        sd["quantize.embed.weight"] = _rand(g, n_codes, embed_dim)
    else:
        sd["quantize.embedding.weight"] = _rand(g, n_codes, embed_dim)
    if loss:  # VQLPIPSWithDiscriminator: a PatchGAN and LPIPS with its scaling layer
        sd["loss.discriminator.main.0.weight"] = _rand(g, 8, in_ch, 4, 4)
        sd["loss.discriminator.main.0.bias"] = _rand(g, 8)
        sd["loss.perceptual_loss.scaling_layer.shift"] = _rand(g, 1, 3, 1, 1)
        sd["loss.perceptual_loss.net.slice1.0.weight"] = _rand(g, 4, 3, 3, 3)
        sd["loss.perceptual_loss.lin0.model.1.weight"] = _rand(g, 1, 4, 1, 1)
    return {prefix + k: v for k, v in sd.items()}


def ref_gpt(prefix: str = "transformer.", *, vocab: int = 16, block_size: int = 6, n_layer: int = 1,
            n_embd: int = 8, seed: int = 1) -> dict[str, Tensor]:
    """taming minGPT state dict, including each block's causal `attn.mask` buffer."""
    g = torch.Generator().manual_seed(seed)
    sd = {"tok_emb.weight": _rand(g, vocab, n_embd), "pos_emb": _rand(g, 1, block_size, n_embd)}
    for i in range(n_layer):
        p = f"blocks.{i}"
        for ln in ("ln1", "ln2"):
            sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"] = 1 + _rand(g, n_embd), _rand(g, n_embd)
        for name in ("key", "query", "value", "proj"):
            sd[f"{p}.attn.{name}.weight"] = _rand(g, n_embd, n_embd)
            sd[f"{p}.attn.{name}.bias"] = _rand(g, n_embd)
        sd[f"{p}.attn.mask"] = torch.ones(block_size, block_size).tril().view(1, 1, block_size, block_size)
        sd[f"{p}.mlp.0.weight"], sd[f"{p}.mlp.0.bias"] = _rand(g, 4 * n_embd, n_embd), _rand(g, 4 * n_embd)
        sd[f"{p}.mlp.2.weight"], sd[f"{p}.mlp.2.bias"] = _rand(g, n_embd, 4 * n_embd), _rand(g, n_embd)
    sd["ln_f.weight"], sd["ln_f.bias"] = 1 + _rand(g, n_embd), _rand(g, n_embd)
    sd["head.weight"] = _rand(g, vocab, n_embd)
    return {prefix + k: v for k, v in sd.items()}


# ---- classes of packages that are not installed where checkpoints convert ---------------------------

FOREIGN = '''
"""Stands in for pytorch_lightning and omegaconf; importing it leaves a mark."""
import pathlib
import typing

pathlib.Path(__file__).with_name("imported").touch()


class ModelCheckpoint:
    def __init__(self, monitor):
        self.monitor = monitor


class AttributeDict(dict):
    """Lightning's hyper-parameter dict."""


class Metadata:
    def __init__(self):
        self.ref_type, self.object_type, self.optional = typing.Any, dict, True


class DictConfig:
    """Pickles like omegaconf's: nodes under _content, each pointing back to its parent."""

    def __init__(self, content, parent=None):
        self._metadata, self._parent = Metadata(), parent
        self._content = {k: node(v, self) for k, v in content.items()}

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)


class ListConfig(DictConfig):
    def __init__(self, content, parent=None):
        self._metadata, self._parent = Metadata(), parent
        self._content = [node(v, self) for v in content]


class AnyNode:
    def __init__(self, value, parent):
        self._val, self._parent, self._metadata = value, parent, Metadata()


def node(value, parent):
    if isinstance(value, dict):
        return DictConfig(value, parent)
    if isinstance(value, list):
        return ListConfig(value, parent)
    return AnyNode(value, parent)


class Trap:
    """Constructing one writes `marker`; a pickle of it asks for exactly that."""

    def __init__(self, marker):
        pathlib.Path(marker).touch()

    def __reduce__(self):
        return (Trap, (self.marker,))


def touch(marker):
    pathlib.Path(marker).touch()


class CallsTouch:
    def __reduce__(self):
        return (touch, (self.marker,))
'''


@pytest.fixture
def foreign(tmp_path, monkeypatch):
    """A throwaway module to pickle objects from; `forget(module)` removes it before converting."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vqt_foreign.py").write_text(FOREIGN)
    monkeypatch.syspath_prepend(str(site))
    module = importlib.import_module("vqt_foreign")
    yield module
    sys.modules.pop("vqt_foreign", None)


def forget(module, keep_importable: bool = False) -> Path:
    """Unload the foreign module (and take it off sys.path unless `keep_importable`); return its mark."""
    sys.modules.pop(module.__name__)
    site = Path(module.__file__).parent
    if not keep_importable:
        sys.path.remove(str(site))
    (site / "imported").unlink()
    return site / "imported"


def save_lightning(path: Path, state_dict: dict, foreign, hparams=None) -> None:
    """A Lightning 1.x checkpoint: callbacks keyed by their class, optimizer state, hyper-parameters."""
    ckpt = {
        "epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
        "state_dict": OrderedDict(state_dict),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3), "step": 5}},
                              "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [],
        "callbacks": {foreign.ModelCheckpoint: {"best_model_score": torch.tensor(0.25),
                                                "instance": foreign.ModelCheckpoint("val/rec_loss")}},
    }
    if hparams is not None:
        ckpt["hyper_parameters"] = hparams
    torch.save(ckpt, path)


def hparams(foreign, **params):
    """Lightning hyper_parameters as OmegaConf objects inside an AttributeDict."""
    out = foreign.AttributeDict()
    for key, value in params.items():
        out[key] = foreign.DictConfig(value) if isinstance(value, dict) else value
    return out


def ddconfig(resolution: int, **kw) -> dict:
    return {"double_z": False, "z_channels": 32, "resolution": resolution, "in_channels": 3, "out_ch": 3,
            "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [resolution // 2],
            "dropout": 0.0, **kw}


# ---- plain-op references ---------------------------------------------------------------------------

def conv(x: Tensor, sd: dict, name: str, padding: int = 0) -> Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=padding)


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:  # (B, D, h, w), (K, D) -> (B, h, w)
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
    dist = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1)  # (N, K)
    return dist.argmin(1).view(b, h, w)


def layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def gpt_one_layer(sd: dict, idx: Tensor, n_head: int) -> Tensor:
    """minGPT with one block, from the stored tensors (prefix `transformer.`): logits (B, T, V)."""
    w = {k.removeprefix("transformer."): v for k, v in sd.items()}
    B, T = idx.shape
    x = w["tok_emb.weight"][idx] + w["pos_emb"][0, :T]  # (B, T, C)
    C = x.shape[-1]
    hs = C // n_head
    h = layer_norm(x, w["blocks.0.ln1.weight"], w["blocks.0.ln1.bias"])

    def heads(name: str) -> Tensor:  # (B, nh, T, hs)
        y = h @ w[f"blocks.0.attn.{name}.weight"].T + w[f"blocks.0.attn.{name}.bias"]
        return y.view(B, T, n_head, hs).transpose(1, 2)

    q, k, v = heads("query"), heads("key"), heads("value")
    att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    x = x + y @ w["blocks.0.attn.proj.weight"].T + w["blocks.0.attn.proj.bias"]
    h = layer_norm(x, w["blocks.0.ln2.weight"], w["blocks.0.ln2.bias"])
    h = h @ w["blocks.0.mlp.0.weight"].T + w["blocks.0.mlp.0.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    x = x + h @ w["blocks.0.mlp.2.weight"].T + w["blocks.0.mlp.2.bias"]
    return layer_norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["head.weight"].T


def load_gpt(bundle) -> GPT:
    cfg = bundle.config["transformer"]
    gpt = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}))
    load_state(gpt, bundle.namespace("transformer"), "test")
    return gpt.eval()


# ---- stage 1 -----------------------------------------------------------------------------------------

def test_vqmodel_lightning_checkpoint_matches_reference_values(tmp_path, foreign):
    sd = ref_vqgan()
    src, dst = tmp_path / "last.ckpt", tmp_path / "vqgan.safetensors"
    save_lightning(src, sd, foreign)
    mark = forget(foreign)

    report = convert_checkpoint(src, dst)

    assert not mark.exists()  # the foreign module was never imported
    assert (report.kind, report.source) == ("stage1", "VQModel")
    assert {k for k in sd if k.startswith("loss.")} | {"optimizer_states", "callbacks"} <= set(report.dropped)
    assert any("assumed 256" in w for w in report.warnings)
    assert "loss.* (5)" in report.summary()
    model = Stage1Model.load(dst)
    cfg = model.model_config
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels) == (32, (1, 2), 1, 32)
    assert cfg.attn_resolutions == (128,)  # level 1 of an assumed 256
    q = model.quantizer_config
    assert (q.kind, q.options["n_codes"], q.embed_dim, q.options["legacy_beta"]) == ("vq", 16, 8, True)
    assert [q.options[k] for k in ("codebook_dim", "l2_normalize", "restart_dead", "ema")] == [0, False, False, False]
    assert load_bundle(dst).condition == {}

    vq = model.vqgan
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vq.encoder.conv_in(x), conv(x, sd, "encoder.conv_in", padding=1))
        h = vq.encoder(x)  # (2, 32, 4, 4), our encoder
        z = conv(h, sd, "quant_conv")
        torch.testing.assert_close(vq.quant_conv(h), z)
        codes = model.encode(x)
        assert torch.equal(codes, nearest_codes(z, sd["quantize.embedding.weight"]))

        seen: dict[str, Tensor] = {}
        vq.decoder.register_forward_pre_hook(lambda m, args: seen.update(decoder_in=args[0]))
        vq.decoder.conv_out.register_forward_hook(
            lambda m, args, out: seen.update(conv_in=args[0], conv_out=out))
        vq.decode_indices(codes)
        looked_up = sd["quantize.embedding.weight"][codes].permute(0, 3, 1, 2)  # (2, 8, 4, 4)
        torch.testing.assert_close(seen["decoder_in"], conv(looked_up, sd, "post_quant_conv"))
        torch.testing.assert_close(seen["conv_out"], conv(seen["conv_in"], sd, "decoder.conv_out", padding=1))


def test_bare_state_dict_and_one_channel_model(tmp_path):
    sd = ref_vqgan(in_ch=1, out_ch=1, loss=False)
    torch.save(sd, tmp_path / "depth.ckpt")  # a bare state dict, no Lightning wrapper
    convert_checkpoint(tmp_path / "depth.ckpt", tmp_path / "depth.safetensors", condition="depth")
    model = Stage1Model.load(tmp_path / "depth.safetensors")
    assert (model.model_config.in_channels, model.model_config.out_channels) == (1, 1)
    assert load_bundle(tmp_path / "depth.safetensors").condition == stored("depth", {"encoding": "auto", "inverse": False, "slope": False})
    x = torch.rand(1, 1, 8, 8)
    z = conv(model.vqgan.encoder(x), sd, "quant_conv")
    assert torch.equal(model.encode(x), nearest_codes(z, sd["quantize.embedding.weight"]))


def test_gumbel_vq(tmp_path, foreign):
    sd = ref_vqgan(gumbel=True, embed_dim=32, n_codes=12)
    save_lightning(tmp_path / "g.ckpt", sd, foreign, hparams(foreign, ddconfig=ddconfig(64), kl_weight=1e-8))
    forget(foreign)
    report = convert_checkpoint(tmp_path / "g.ckpt", tmp_path / "g.safetensors")
    assert report.source == "GumbelVQ" and not report.warnings
    model = Stage1Model.load(tmp_path / "g.safetensors")
    assert model.model_config.attn_resolutions == (32,) and model.model_config.resolution == 64
    q = model.quantizer_config
    assert (q.kind, q.options["n_codes"], q.embed_dim, q.options["kl_weight"]) == ("gumbel", 12, 32, 1e-8)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        logits = conv(conv(model.vqgan.encoder(x), sd, "quant_conv"), sd, "quantize.proj")  # (2, 12, 4, 4)
        codes = model.encode(x)
        assert torch.equal(codes, logits.argmax(1))
        torch.testing.assert_close(model.vqgan.quantize.indices_to_quantized(codes),
                                   sd["quantize.embed.weight"][codes].permute(0, 3, 1, 2))


def test_segmentation_model_drops_colorize(tmp_path, foreign):
    sd = ref_vqgan(in_ch=5, out_ch=5, loss=False)
    sd["colorize"] = torch.randn(3, 5, 1, 1)
    hp = hparams(foreign, ddconfig=ddconfig(64, in_channels=5, out_ch=5), n_labels=5, n_embed=16,
                 embed_dim=8, image_key="segmentation")
    save_lightning(tmp_path / "seg.ckpt", sd, foreign, hp)
    forget(foreign)
    report = convert_checkpoint(tmp_path / "seg.ckpt", tmp_path / "seg.safetensors")
    assert report.source == "VQSegmentationModel" and "colorize" in report.dropped
    bundle = load_bundle(tmp_path / "seg.safetensors")
    assert bundle.condition == stored("segmentation", {"n_labels": 5, "label_shift": 0, "unlabeled": -1, "unlabeled_label": -1})
    assert "vqgan.colorize" not in bundle.tensors
    assert Stage1Model.from_bundle(bundle).model_config.in_channels == 5


def stored(name, options):
    """A converted bundle's condition as vqtoolkit stores it: every option, and the plugin."""
    return {"name": name, "options": options, "plugin": {"name": name, "source": "built-in"}}


# ---- stage 2 -----------------------------------------------------------------------------------------

def net2net_hparams(foreign, cond_stage, block_size=6, **extra):
    return hparams(
        foreign,
        transformer_config={"target": "taming.modules.transformer.mingpt.GPT",
                            "params": {"vocab_size": 16, "block_size": block_size, "n_layer": 1, "n_head": 2,
                                       "n_embd": 8}},
        first_stage_config={"target": "taming.models.vqgan.VQModel",
                            "params": {"embed_dim": 8, "n_embed": 16, "ddconfig": ddconfig(32),
                                       "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}},
        cond_stage_config=cond_stage, **extra)


def test_unconditional_transformer_logits_match_hand_computed(tmp_path, foreign):
    sd = {**ref_vqgan("first_stage_model.", loss=False), **ref_gpt(block_size=5)}
    save_lightning(tmp_path / "ffhq.ckpt", sd, foreign,
                   net2net_hparams(foreign, "__is_unconditional__", block_size=5, sos_token=5))
    forget(foreign)
    report = convert_checkpoint(tmp_path / "ffhq.ckpt", tmp_path / "ffhq.safetensors")
    assert (report.kind, report.source) == ("stage2", "Net2NetTransformer")
    assert "transformer.blocks.0.attn.mask" in report.dropped and not report.warnings

    bundle = load_bundle(tmp_path / "ffhq.safetensors", expect_kind="stage2")
    assert bundle.config["transformer"] == {"vocab_size": 16, "block_size": 5, "n_layer": 1, "n_head": 2,
                                            "n_embd": 8, "window": 2}  # the start token + 2x2 codes - 1 <= 5
    assert bundle.config["condition"] == bundle.condition == {"name": "", "options": {}}
    assert bundle.config["sos_token"] == 5 and "cond_stage" not in bundle.config
    assert not bundle.namespace("cond")
    first = Stage1Model.from_bundle(bundle, "vqgan", "first_stage")
    assert first.model_config.attn_resolutions == (16,)

    idx = torch.randint(16, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt(bundle)(idx), gpt_one_layer(sd, idx, n_head=2),
                                   atol=1e-5, rtol=1e-5)


def test_coordinates_and_class_conditions_come_from_the_config(tmp_path, foreign):
    sd = {**ref_vqgan("first_stage_model.", loss=False), **ref_gpt()}
    coord = {"target": "taming.modules.misc.coord.CoordStage", "params": {"n_embed": 16, "down_factor": 2}}
    label = {"target": "taming.modules.util.Labelator", "params": {"n_classes": 10}}
    save_lightning(tmp_path / "coord.ckpt", sd, foreign, net2net_hparams(foreign, coord))
    save_lightning(tmp_path / "cin.ckpt", sd, foreign, net2net_hparams(foreign, label))
    forget(foreign)

    convert_checkpoint(tmp_path / "coord.ckpt", tmp_path / "coord.safetensors")
    bundle = load_bundle(tmp_path / "coord.safetensors")
    assert bundle.condition == stored("coordinates", {"n_codes": 16, "down_factor": 2})
    assert "sos_token" not in bundle.config

    with pytest.raises(CheckpointError, match="--condition 'depth' does not match"):
        convert_checkpoint(tmp_path / "cin.ckpt", tmp_path / "cin.safetensors", condition="depth")
    convert_checkpoint(tmp_path / "cin.ckpt", tmp_path / "cin.safetensors")
    assert load_bundle(tmp_path / "cin.safetensors").condition == stored("class", {"n_classes": 10,
                                                                                 "label_dropout": 0.1})


def test_vq_condition_stage_needs_its_name_and_heads(tmp_path):
    sd = {**ref_vqgan("first_stage_model.", loss=False),
          **ref_vqgan("cond_stage_model.", in_ch=1, out_ch=1, seed=4), **ref_gpt()}
    src, dst = tmp_path / "drin.ckpt", tmp_path / "drin.safetensors"
    torch.save({"state_dict": sd}, src)  # no config anywhere
    with pytest.raises(CheckpointError, match="pass --condition NAME"):
        convert_checkpoint(src, dst, n_head=2)
    with pytest.raises(CheckpointError, match="attention heads cannot be read.*--config"):
        convert_checkpoint(src, dst, condition="depth")
    assert not dst.exists()

    report = convert_checkpoint(src, dst, condition="depth", n_head=2)
    assert sum("assumed 256" in w for w in report.warnings) == 2
    assert "cond_stage_model.loss.discriminator.main.0.weight" in report.dropped
    bundle = load_bundle(dst)
    assert bundle.condition == bundle.config["condition"] == stored("depth", {"encoding": "auto", "inverse": False, "slope": False})
    cond = Stage1Model.from_bundle(bundle, "cond", "cond_stage")
    assert cond.model_config.in_channels == 1
    c = torch.rand(1, 1, 8, 8)
    cond_sd = {k.removeprefix("cond_stage_model."): v for k, v in sd.items()}
    z = conv(cond.vqgan.encoder(c), cond_sd, "quant_conv")
    assert torch.equal(cond.encode(c), nearest_codes(z, sd["cond_stage_model.quantize.embedding.weight"]))
    idx = torch.randint(16, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt(bundle)(idx), gpt_one_layer(sd, idx, n_head=2),
                                   atol=1e-5, rtol=1e-5)


def test_non_identity_permuter_is_refused_by_name(tmp_path, foreign):
    sd = {**ref_vqgan("first_stage_model.", loss=False), **ref_gpt(),
          "permuter.forward_shuffle_idx": torch.arange(4), "permuter.backward_shuffle_idx": torch.arange(4)}
    hp = net2net_hparams(foreign, "__is_unconditional__",
                         permuter_config={"target": "taming.modules.transformer.permuter.Subsample",
                                          "params": {"H": 2, "W": 2}})
    save_lightning(tmp_path / "p.ckpt", sd, foreign, hp)
    forget(foreign)
    with pytest.raises(CheckpointError, match=r"permuter taming\.modules\.transformer\.permuter\.Subsample"):
        convert_checkpoint(tmp_path / "p.ckpt", tmp_path / "p.safetensors")


@pytest.fixture
def yaml_module(monkeypatch):
    """PyYAML, or where it is not installed a stand-in reading JSON (a subset of YAML) the same way."""
    try:
        import yaml
    except ImportError:
        yaml = types.SimpleNamespace(safe_load=json.loads, safe_dump=json.dumps, YAMLError=ValueError)
        monkeypatch.setitem(sys.modules, "yaml", yaml)
    return yaml


def test_yaml_project_config(tmp_path, yaml_module):
    yaml = yaml_module
    sd = {**ref_vqgan("first_stage_model.", loss=False), **ref_gpt(block_size=7)}  # 2x2 coordinates + 2x2 codes - 1
    torch.save({"state_dict": sd}, tmp_path / "faceshq.ckpt")
    project = {"model": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "cond_stage_key": "coord",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {"n_head": 4}},
        "first_stage_config": {"target": "taming.models.vqgan.VQModel", "params": {"ddconfig": ddconfig(32)}},
        "cond_stage_config": {"target": "taming.modules.misc.coord.CoordStage",
                              "params": {"n_embed": 16, "down_factor": 2}}}}}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(project))
    report = convert_checkpoint(tmp_path / "faceshq.ckpt", tmp_path / "f.safetensors",
                                config=tmp_path / "project.yaml")
    assert report.config["transformer"]["n_head"] == 4 and not report.warnings
    assert report.config["condition"]["name"] == "coordinates"
    torch.save({"state_dict": ref_vqgan()}, tmp_path / "vq.ckpt")
    with pytest.raises(CheckpointError, match="describes a taming.models.cond_transformer.Net2NetTransformer"):
        convert_checkpoint(tmp_path / "vq.ckpt", tmp_path / "v.safetensors",
                           config=tmp_path / "project.yaml")


def test_config_errors_name_the_file(tmp_path, monkeypatch, yaml_module):
    torch.save({"state_dict": ref_vqgan()}, tmp_path / "vq.ckpt")
    (tmp_path / "notes.yaml").write_text(yaml_module.safe_dump({"data": {"batch_size": 2}}))
    with pytest.raises(RecipeError, match="notes.yaml has no 'model: {target"):
        convert_checkpoint(tmp_path / "vq.ckpt", tmp_path / "v.safetensors", config=tmp_path / "notes.yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML missing
    with pytest.raises(RecipeError, match="needs PyYAML"):
        convert_checkpoint(tmp_path / "vq.ckpt", tmp_path / "v.safetensors", config=tmp_path / "notes.yaml")


# ---- safety ------------------------------------------------------------------------------------------

class Calls:
    """Pickles as a call of `fn(arg)`."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("fn, arg, name", [
    (os.system, "touch {marker}", "system"),
    (eval, "open({marker!r}, 'w').close()", "builtins.eval"),
    (subprocess.call, ["touch", "{marker}"], "subprocess.call"),
])
def test_pickles_that_call_code_are_refused(tmp_path, fn, arg, name):
    marker = str(tmp_path / "pwned")
    arg = [a.format(marker=marker) for a in arg] if isinstance(arg, list) else arg.format(marker=marker)
    src = tmp_path / "evil.ckpt"
    torch.save({"state_dict": ref_vqgan(loss=False), "payload": Calls(fn, arg)}, src)
    with pytest.raises(CheckpointError, match=f"tries to call .*{name}.*not loaded"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert not Path(marker).exists() and not (tmp_path / "out.safetensors").exists()


def test_foreign_classes_are_recorded_not_run_and_foreign_functions_refused(tmp_path, foreign):
    marker = tmp_path / "trap"
    trap = foreign.Trap.__new__(foreign.Trap)
    trap.marker = str(marker)
    calls = foreign.CallsTouch()
    calls.marker = str(marker)
    torch.save({"state_dict": {"w": torch.ones(2)}, "trap": trap}, tmp_path / "trap.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "calls": calls}, tmp_path / "calls.ckpt")
    mark = forget(foreign, keep_importable=True)  # importable, yet never imported

    loaded = load_checkpoint(tmp_path / "trap.ckpt")
    assert isinstance(loaded["trap"], Placeholder)
    assert loaded["trap"].target == "vqt_foreign.Trap" and loaded["trap"].args == (str(marker),)
    with pytest.raises(CheckpointError, match="tries to call vqt_foreign.touch"):
        load_checkpoint(tmp_path / "calls.ckpt")
    assert not marker.exists() and not mark.exists()


def _rewrite_pickle(path: Path, edit) -> None:
    """Rewrite a torch zip archive with `edit` applied to its data.pkl (as a GPU save would differ)."""
    with zipfile.ZipFile(path) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            z.writestr(name, edit(data) if name.endswith("data.pkl") else data)


def test_tensor_saved_from_cuda_loads_on_cpu(tmp_path):
    src = tmp_path / "gpu.ckpt"
    w = torch.arange(6.0).view(2, 3)
    torch.save({"state_dict": {"w": w, "b": w[1]}}, src)
    _rewrite_pickle(src, lambda p: p.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))
    with zipfile.ZipFile(src) as z:
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    sd = load_checkpoint(src)["state_dict"]
    assert sd["w"].device.type == "cpu" and torch.equal(sd["w"], w) and torch.equal(sd["b"], w[1])


def test_unreadable_files_get_clear_errors(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": ref_vqgan(loss=False)}, good)
    cases = {
        "empty.ckpt": (b"", "is empty"),
        "notes.ckpt": (b"model: VQGAN\n", "not a PyTorch checkpoint"),
        "cut.ckpt": (good.read_bytes()[: good.stat().st_size // 2], "truncated"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.*{message}"):
            convert_checkpoint(tmp_path / name, tmp_path / "out.safetensors")
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "old.ckpt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        load_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"model": [1, 2]}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        convert_checkpoint(tmp_path / "odd.ckpt", tmp_path / "out.safetensors")


def test_existing_output_needs_force(tmp_path):
    torch.save({"state_dict": ref_vqgan(loss=False)}, tmp_path / "m.ckpt")
    (tmp_path / "m.safetensors").write_bytes(b"keep")
    with pytest.raises(VqtError, match="already exists; pass --force"):
        convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "m.safetensors")
    convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "m.safetensors", force=True)
    assert Stage1Model.load(tmp_path / "m.safetensors").n_codes == 16



def test_cli_commands_run_on_converted_bundles(tmp_path, foreign):
    """vqt convert, then encode / decode / sample on what it wrote."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from vqtoolkit.cli import cli

    def vqt(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    save_lightning(tmp_path / "vq.ckpt", ref_vqgan(), foreign)
    sd = {**ref_vqgan("first_stage_model.", loss=False), **ref_gpt(block_size=257)}
    params = net2net_hparams(foreign, "__is_unconditional__", block_size=257, sos_token=0)  # 1 + 16x16
    save_lightning(tmp_path / "gpt.ckpt", sd, foreign, params)
    forget(foreign)
    vqt("convert", tmp_path / "vq.ckpt", "-o", tmp_path / "vq.safetensors")
    vqt("convert", tmp_path / "gpt.ckpt", "-o", tmp_path / "gpt.safetensors")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "x.png")
    vqt("encode", tmp_path / "x.png", "--model", tmp_path / "vq.safetensors", "-o", tmp_path / "x.npy")
    vqt("decode", tmp_path / "x.npy", "--model", tmp_path / "vq.safetensors", "-o", tmp_path / "y.png")
    assert Image.open(tmp_path / "y.png").size == (32, 32)
    vqt("sample", "--model", tmp_path / "gpt.safetensors", "--size", "32x32", "-o", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size == (32, 32)
