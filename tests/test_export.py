"""vqt export --to diffusers: the folder loads with diffusers.VQModel.from_pretrained and encodes and
decodes as `vqt encode` / `vqt decode` do; a taming checkpoint goes taming -> convert -> export -> diffusers;
what diffusers cannot express is refused by name. The export itself never imports diffusers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.test_convert import ref_vqgan
from vqtoolkit.cli import cli
from vqtoolkit.config import ModelConfig, QuantizerConfig
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.stage2 import Stage2Model

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (32, 48)  # (H, W) of the test images: not square, so a transposed axis would show


def vqt(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def tiny_vqgan(model: dict | None = None, quantizer: dict | None = None, seed: int = 0) -> Stage1Model:
    """A VQGAN with attention on one of three levels and the default factorized, l2-normalised codebook;
    weights perturbed so that every layer matters."""
    torch.manual_seed(seed)
    options = {"n_codes": 32, **(quantizer or {})}
    built = Stage1Model.build(
        ModelConfig(**{"ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (16,),
                       "z_channels": 16, "resolution": 32, "norm_groups": 8, **(model or {})}),
        QuantizerConfig(kind=options.pop("kind", "vq"), embed_dim=options.pop("embed_dim", 12), options=options))
    with torch.no_grad():
        for p in built.vqgan.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return built


def images(folder: Path, n: int = 2) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        smooth = rng.random((SIZE[0] // 4, SIZE[1] // 4, 3))  # blocky, so codes vary but are not noise
        array = (np.kron(smooth, np.ones((4, 4, 1))) * 255).astype(np.uint8)
        paths.append(folder / f"im{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def diffusers_round_trip(bundle: Path, exported: Path, tmp_path: Path) -> None:
    """VQModel.from_pretrained(exported) against `vqt encode` / `vqt decode` of `bundle`, and the model."""
    diffusers = pytest.importorskip("diffusers")
    vq = diffusers.VQModel.from_pretrained(exported).eval()
    paths = images(tmp_path)
    vqt("encode", *paths, "--model", bundle, "-o", tmp_path / "codes")
    for path in paths:
        ours = torch.from_numpy(np.load(tmp_path / "codes" / f"{path.stem}.npy")).long()  # (h, w)
        x = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            latents = vq.encode(x).latents
            _, _, (_, _, indices) = vq.quantize(latents)
            assert torch.equal(indices.view(ours.shape), ours), path

            shape = (1, *ours.shape, vq.config.vq_embed_dim)
            from_indices = vq.decode(ours.flatten(), force_not_quantize=True, shape=shape).sample
            from_latents = vq.decode(latents).sample
        expected = Stage1Model.load(bundle).decode(ours[None])
        torch.testing.assert_close(from_indices.clamp(-1, 1), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(from_latents.clamp(-1, 1), expected, atol=1e-4, rtol=0)
        vqt("decode", tmp_path / "codes" / f"{path.stem}.npy", "--model", bundle,
            "-o", tmp_path / f"{path.stem}.png", "--force")
        png = np.array(Image.open(tmp_path / f"{path.stem}.png")).astype(int)
        ours_png = ((from_indices[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)
        assert np.abs(png - ours_png).max() <= 1  # a float difference may round a pixel the other way


@pytest.mark.parametrize("quantizer", [
    {},  # the default: codebook_dim 8, l2-normalised lookup
    {"codebook_dim": 0, "l2_normalize": False},  # the paper's lookup
    {"codebook_dim": 4, "l2_normalize": False},
    {"codebook_dim": 0, "l2_normalize": True},
], ids=["factorized-l2", "plain", "factorized", "l2"])
def test_export_loads_in_diffusers_and_matches_encode_and_decode(tmp_path, quantizer):
    tiny_vqgan(quantizer=quantizer).save(tmp_path / "vq.safetensors")
    out = vqt("export", tmp_path / "vq.safetensors", "--to", "diffusers", "-o", tmp_path / "vq-diffusers")
    assert f"wrote {tmp_path / 'vq-diffusers'}" in out
    config = json.loads((tmp_path / "vq-diffusers" / "config.json").read_text())
    assert config["vq_embed_dim"] == (quantizer.get("codebook_dim", 8) or 12)
    assert config["down_block_types"] == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"]
    diffusers_round_trip(tmp_path / "vq.safetensors", tmp_path / "vq-diffusers", tmp_path)


def test_taming_checkpoint_converts_then_exports_to_diffusers(tmp_path):
    torch.save({"state_dict": ref_vqgan()}, tmp_path / "last.ckpt")  # the reference layout, by hand
    vqt("convert", tmp_path / "last.ckpt", "-o", tmp_path / "vq.safetensors")
    vqt("export", tmp_path / "vq.safetensors", "--to", "diffusers", "-o", tmp_path / "vq-diffusers")
    diffusers_round_trip(tmp_path / "vq.safetensors", tmp_path / "vq-diffusers", tmp_path)


def test_export_needs_no_diffusers(tmp_path):
    tiny_vqgan().save(tmp_path / "vq.safetensors")
    run = ("import sys; sys.modules['diffusers'] = None; from vqtoolkit.cli import main; "  # import fails
           f"sys.argv = ['vqt', 'export', {str(tmp_path / 'vq.safetensors')!r}, '--to', 'diffusers', "
           f"'-o', {str(tmp_path / 'out')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]


def test_stage2_bundle_exports_its_first_stage(tmp_path):
    first = tiny_vqgan()
    Stage2Model(first, GPT(GPTConfig(32, 1 + 16, 1, 2, 16)), 4, None).save(tmp_path / "gpt.safetensors")
    out = vqt("export", tmp_path / "gpt.safetensors", "--to", "diffusers", "-o", tmp_path / "vq-diffusers")
    assert "exported the first stage (VQGAN) of stage-2 bundle" in out
    first.save(tmp_path / "vq.safetensors")
    diffusers_round_trip(tmp_path / "vq.safetensors", tmp_path / "vq-diffusers", tmp_path)


@pytest.mark.parametrize("model, quantizer, named", [
    ({}, {"kind": "gumbel", "embed_dim": 16},
     "quantizer.kind = 'gumbel' cannot be exported to diffusers"),
    ({"ch_mult": (2, 2)}, {}, "model.ch_mult = [2, 2] cannot be exported to diffusers"),
])
def test_what_diffusers_cannot_express_is_refused_by_name(tmp_path, model, quantizer, named):
    tiny_vqgan(model, quantizer).save(tmp_path / "vq.safetensors")
    out = vqt("export", tmp_path / "vq.safetensors", "--to", "diffusers", "-o", tmp_path / "out", code=1)
    assert named in out
    assert not (tmp_path / "out").exists()


def test_outputs_are_never_overwritten_without_force(tmp_path):
    tiny_vqgan().save(tmp_path / "vq.safetensors")
    args = ("export", tmp_path / "vq.safetensors", "--to", "diffusers", "-o", tmp_path / "out")
    vqt(*args)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert "already exists; pass --force" in vqt(*args, code=1)
    vqt(*args, "--force")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # --force replaces the export only
    (tmp_path / "file").write_text("x")
    assert "is a file" in vqt("export", tmp_path / "vq.safetensors", "--to", "diffusers",
                              "-o", tmp_path / "file", "--force", code=2)
    assert "Invalid value for '--to'" in vqt("export", tmp_path / "vq.safetensors", "--to", "onnx",
                                             "-o", tmp_path / "x", code=2)
    assert not list(tmp_path.glob("out/.*.tmp"))  # no temp files left behind
