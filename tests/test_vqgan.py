import pytest
import torch

from vqtoolkit.models.quantize import GumbelQuantizer, VectorQuantizer
from vqtoolkit.quantizer_options import build_quantizer
from vqtoolkit.models.vqgan import VQGAN
from vqtoolkit.recipes import QuantizerConfig

FFHQ = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], z_channels=256,
            in_channels=3, out_channels=3, dropout=0.0, resolution=256)


def tiny(ch_mult=(1, 1, 2), quantizer=None, resolution=16, attn=(8,)):
    quantizer = quantizer or VectorQuantizer(32, 8)
    return VQGAN(ch=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=attn, z_channels=16,
                 in_channels=3, out_channels=3, dropout=0.0, resolution=resolution, quantizer=quantizer)


def test_ffhq_parameter_counts_match_reference():
    with torch.device("meta"):
        model = VQGAN(**FFHQ, quantizer=VectorQuantizer(1024, 256))
    assert sum(p.numel() for p in model.encoder.parameters()) == 29_298_176
    assert sum(p.numel() for p in model.decoder.parameters()) == 42_449_795


def test_reference_parameter_names():
    with torch.device("meta"):
        keys = set(VQGAN(**FFHQ, quantizer=VectorQuantizer(1024, 256)).state_dict())
    for key in ["encoder.conv_in.weight", "encoder.down.0.block.1.conv2.bias",
                "encoder.down.2.block.0.nin_shortcut.weight", "encoder.down.4.attn.1.proj_out.weight",
                "encoder.down.3.downsample.conv.weight", "encoder.mid.attn_1.q.weight",
                "encoder.mid.block_2.norm2.weight", "encoder.norm_out.bias", "encoder.conv_out.weight",
                "decoder.up.4.attn.2.k.weight", "decoder.up.1.upsample.conv.weight",
                "decoder.up.0.block.2.conv1.weight", "quant_conv.weight", "post_quant_conv.bias",
                "quantize.embedding.weight"]:
        assert key in keys, key
    assert "encoder.down.4.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys


@pytest.mark.parametrize("ch_mult,factor", [((1, 1, 2), 4), ((1, 1, 2, 2), 8)])
def test_shapes(ch_mult, factor):
    torch.manual_seed(0)
    model = tiny(ch_mult).eval()
    assert model.factor == factor
    x = torch.randn(2, 3, 16, 24)
    recon, qloss, indices, stats = model(x)
    assert recon.shape == x.shape
    assert indices.shape == (2, 16 // factor, 24 // factor) and indices.dtype == torch.long
    assert qloss.shape == () and set(stats) >= {"usage", "perplexity"}
    quantized, idx, _, _ = model.encode(x)
    assert quantized.shape == (2, 8, 16 // factor, 24 // factor)
    assert torch.equal(model.decode_indices(idx), model.decode(quantized))
    assert model.last_layer is model.decoder.conv_out.weight


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        recon, _, indices, _ = model(x)
        model = model.to(memory_format=torch.channels_last)
        recon_cl, _, indices_cl, _ = model(x.to(memory_format=torch.channels_last))
    assert torch.equal(indices, indices_cl)
    torch.testing.assert_close(recon_cl, recon, atol=1e-5, rtol=1e-5)


def test_gradients_reach_encoder_through_quantizer():
    torch.manual_seed(0)
    model = tiny(quantizer=build_quantizer(QuantizerConfig(embed_dim=8, options={"n_codes": 32})))
    recon, qloss, _, _ = model(torch.randn(2, 3, 16, 16))
    (recon.abs().mean() + qloss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.proj_in.weight.grad.abs().sum() > 0


def test_gumbel_quantizer_plugs_in():
    torch.manual_seed(0)
    model = tiny(quantizer=GumbelQuantizer(32, 8)).eval()
    recon, _, indices, _ = model(torch.randn(1, 3, 16, 16))
    assert recon.shape == (1, 3, 16, 16) and indices.shape == (1, 4, 4)
    assert model.quant_conv.out_channels == 8 and model.quantize.proj.in_channels == 8


def test_norm_groups_changes_only_the_grouping():
    torch.manual_seed(0)
    reference, fewer = tiny(), VQGAN(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,),
                                     z_channels=16, in_channels=3, out_channels=3, resolution=16,
                                     quantizer=VectorQuantizer(32, 8), norm_groups=4)
    norms = [m for m in fewer.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 33 and {m.num_groups for m in norms} == {4}  # every norm layer
    assert {m.num_groups for m in reference.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    # the same parameters, names and shapes: bundles and imported weights load either way
    assert {k: v.shape for k, v in reference.state_dict().items()} == {k: v.shape for k, v in fewer.state_dict().items()}
    fewer.load_state_dict(reference.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert not torch.allclose(reference.eval()(x)[0], fewer.eval()(x)[0])


def test_norm_groups_travels_in_the_bundle(tmp_path):
    from vqtoolkit.api import Stage1Model
    from vqtoolkit.recipes import ModelConfig, QuantizerConfig

    model = Stage1Model.build(ModelConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                                          resolution=16, norm_groups=8), QuantizerConfig(embed_dim=8, options={"n_codes": 16}))
    model.save(tmp_path / "m.safetensors")
    loaded = Stage1Model.load(tmp_path / "m.safetensors")
    assert loaded.model_config.norm_groups == 8
    assert {m.num_groups for m in loaded.vqgan.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), model.vqgan.eval()(x)[0].clamp(-1, 1))
