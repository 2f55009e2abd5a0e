"""Converted taming transformers keep their own window and read the reference's condition files.

A Net2NetTransformer of the kind the issue names (32-pixel images at f = 4, an 8x8 condition grid,
block_size 128) is written in the reference layout, converted, and sampled greedily through the CLI
from a packed depth PNG and from a COCO-Stuff label map holding 255; the tokens equal a plain
reference loop over the stored weights, fed with the condition decoded by hand as the reference does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.checkpoint import load_bundle
from vqtoolkit.cli import cli

from .taming_files import decode_by_hand, midas_like, save_label_map, save_taming_depth
from .test_convert import conv, ddconfig, forget, gpt_one_layer, hparams, nearest_codes, ref_gpt, ref_vqgan, save_lightning
from .test_convert import foreign  # noqa: F401  (the fixture that pickles Lightning's and OmegaConf's classes)

SIDE, WINDOW = 32, 8  # pixels; codes per side at f = 4
F4 = {"ch_mult": (1, 2, 2), "attn_levels": ()}


def vqt(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def net2net(foreign, tmp_path, cond_target: str, channels: int, **cond_params) -> tuple[dict, object]:
    """A reference-layout D-RIN-like checkpoint with a VQGAN condition stage reading `channels`."""
    sd = {**ref_vqgan("first_stage_model.", loss=False, **F4),
          **ref_vqgan("cond_stage_model.", in_ch=channels, out_ch=channels, seed=4, loss=False, **F4),
          **ref_gpt(block_size=2 * WINDOW * WINDOW)}  # 64 condition + 64 image tokens
    if cond_target.endswith("VQSegmentationModel"):
        sd["cond_stage_model.colorize"] = torch.randn(3, channels, 1, 1)
    stage = {"embed_dim": 8, "n_embed": 16, **cond_params,
             "ddconfig": ddconfig(SIDE, ch_mult=[1, 2, 2], attn_resolutions=[], in_channels=channels, out_ch=channels)}
    params = hparams(
        foreign, cond_stage_key="depth" if channels == 1 else "segmentation",
        transformer_config={"target": "taming.modules.transformer.mingpt.GPT",
                            "params": {"vocab_size": 16, "block_size": 128, "n_layer": 1, "n_head": 2, "n_embd": 8}},
        first_stage_config={"target": "taming.models.vqgan.VQModel",
                            "params": {"embed_dim": 8, "n_embed": 16,
                                       "ddconfig": ddconfig(SIDE, ch_mult=[1, 2, 2], attn_resolutions=[])}},
        cond_stage_config={"target": cond_target, "params": stage})
    save_lightning(tmp_path / "model.ckpt", sd, foreign, params)
    forget(foreign)
    return sd, tmp_path / "model.ckpt"


@torch.no_grad()
def reference_tokens(sd: dict, bundle_path, raw: torch.Tensor) -> torch.Tensor:
    """Net2NetTransformer.sample with top-k 1, plainly: the condition's codes (encoder, quant_conv and
    nearest codebook entry), then one greedy code at a time over the whole growing sequence."""
    cond = Stage1Model.from_bundle(load_bundle(bundle_path), "cond", "cond_stage")
    cond_sd = {k.removeprefix("cond_stage_model."): v for k, v in sd.items()}
    z = conv(cond.vqgan.encoder(raw), cond_sd, "quant_conv")
    x = nearest_codes(z, sd["cond_stage_model.quantize.embedding.weight"]).reshape(1, -1)  # (1, 64)
    for _ in range(WINDOW * WINDOW):
        logits = gpt_one_layer(sd, x, n_head=2)[:, -1]  # (1, V)
        x = torch.cat([x, logits.argmax(-1, keepdim=True)], dim=1)
    return x[0, WINDOW * WINDOW:].reshape(WINDOW, WINDOW)


def test_window_is_inferred_and_greedy_tokens_equal_the_reference_loop_from_packed_depth(tmp_path, foreign):
    sd, ckpt = net2net(foreign, tmp_path, "taming.models.vqgan.VQModel", 1)
    out = vqt("convert", ckpt, "-o", tmp_path / "drin.safetensors")
    assert "warning" not in out
    assert load_bundle(tmp_path / "drin.safetensors").config["transformer"]["window"] == WINDOW

    depth_png = save_taming_depth(tmp_path / "depth.png", midas_like(3, (SIDE, SIDE)))
    vqt("sample", "--model", tmp_path / "drin.safetensors", "--cond", depth_png, "--size", f"{SIDE}x{SIDE}",
        "--top-k", "1", "--n", "2", "--codes", "--device", "cpu", "-o", tmp_path / "out")
    codes = np.load(tmp_path / "out" / "codes.npy")  # (2, 8, 8)

    depth = decode_by_hand(depth_png)  # the reference's rgba_to_depth and preprocess_depth
    raw = (depth - depth.min()) / max(1e-8, depth.max() - depth.min()) * np.float32(2) - np.float32(1)
    expected = reference_tokens(sd, tmp_path / "drin.safetensors", torch.from_numpy(raw)[None, None])
    assert codes.shape == (2, WINDOW, WINDOW)
    assert np.array_equal(codes[0], expected.numpy()) and np.array_equal(codes[1], expected.numpy())

    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    picture = np.round(np.clip((1 - raw) / 2, 0, 1) * 255).astype(np.uint8)  # near (small) is bright
    assert np.array_equal(grid[2:2 + SIDE, 2:2 + SIDE], np.repeat(picture[:, :, None], 3, axis=2))

    vqt("sample", "--model", tmp_path / "drin.safetensors", "--cond", save_taming_depth(
        tmp_path / "wide.png", midas_like(4, (SIDE, 2 * SIDE))), "--size", f"{2 * SIDE}x{SIDE}", "--device", "cpu",
        "--codes", "-o", tmp_path / "wide")
    assert np.load(tmp_path / "wide" / "codes.npy").shape == (1, WINDOW, 2 * WINDOW)  # slides its own window


def test_window_override(tmp_path, foreign):
    _, ckpt = net2net(foreign, tmp_path, "taming.models.vqgan.VQModel", 1)
    vqt("convert", ckpt, "-o", tmp_path / "w4.safetensors", "--window", "4")
    assert load_bundle(tmp_path / "w4.safetensors").config["transformer"]["window"] == 4
    result = CliRunner().invoke(cli, ["convert", str(ckpt), "-o", str(tmp_path / "w9.safetensors"), "--window", "9"])
    assert result.exit_code != 0
    assert "--window 9 needs 161 positions, but" in result.output and "block_size 128" in result.output


def test_coco_label_map_with_255_samples_as_the_reference_reads_it(tmp_path, foreign):
    sd, ckpt = net2net(foreign, tmp_path, "taming.models.vqgan.VQSegmentationModel", 183, n_labels=183)
    vqt("convert", ckpt, "-o", tmp_path / "coco.safetensors")
    bundle = load_bundle(tmp_path / "coco.safetensors")
    assert bundle.condition["options"] == {"n_labels": 183, "label_shift": 1, "unlabeled": 255, "unlabeled_label": 0}

    stored = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) // 9) % 182  # stuff and thing labels 0..181
    stored[:10, :12] = 255  # unlabeled
    label_png = save_label_map(tmp_path / "000000000139.png", stored)
    vqt("sample", "--model", tmp_path / "coco.safetensors", "--cond", label_png, "--size", f"{SIDE}x{SIDE}",
        "--top-k", "1", "--codes", "--device", "cpu", "-o", tmp_path / "s.png")

    seg = np.array(Image.open(label_png))
    assert Image.open(label_png).mode == "L" and (seg == 255).any()
    onehot = np.eye(183, dtype=np.float32)[seg + np.uint8(1)]  # the reference: uint8 + 1, 255 wraps to 0
    raw = torch.from_numpy(onehot).permute(2, 0, 1)[None]  # (1, 183, H, W)
    expected = reference_tokens(sd, tmp_path / "coco.safetensors", raw)
    assert np.array_equal(np.load(tmp_path / "s.npy")[0], expected.numpy())


@pytest.mark.parametrize("alpha", [255, 0])
def test_an_rgba_photo_as_depth_is_refused_by_sample(tmp_path, foreign, alpha):
    _, ckpt = net2net(foreign, tmp_path, "taming.models.vqgan.VQModel", 1)
    vqt("convert", ckpt, "-o", tmp_path / "drin.safetensors")
    photo = np.dstack([np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3)), np.full((SIDE, SIDE), alpha)])
    Image.fromarray(photo.astype(np.uint8)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(cli, ["sample", "--model", str(tmp_path / "drin.safetensors"), "--cond",
                                      str(tmp_path / "photo.png"), "--size", f"{SIDE}x{SIDE}", "-o",
                                      str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "is an RGBA picture, not depth" in result.output
    assert not (tmp_path / "x.png").exists()
