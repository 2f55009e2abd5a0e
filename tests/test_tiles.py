"""model.encode_tile: a VQGAN trained on crops encodes larger images tile by tile, each tile the size
it trained on, so their codes are those a training crop would get."""

import dataclasses

import pytest
import torch

from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.tiles import nearest_tile, tile_starts
from vqtoolkit.errors import RecipeError
from vqtoolkit.config import ModelConfig, QuantizerConfig

ARCH = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=16)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    whole = Stage1Model.build(ModelConfig(**ARCH), QuantizerConfig(embed_dim=8, options={"n_codes": 32}))
    tiled = Stage1Model(whole.vqgan, dataclasses.replace(whole.model_config, encode_tile=16), whole.quantizer_config)
    return whole, tiled  # f = 4: tiles of 4x4 codes


def test_tile_geometry():
    assert tile_starts(4, 4) == [0] and tile_starts(3, 4) == [0]
    assert tile_starts(10, 4) == [0, 2, 4, 6] and tile_starts(11, 4) == [0, 2, 4, 6, 7]
    nearest = nearest_tile(10, [0, 2, 4, 6], 4)
    assert nearest[:2] == [0, 0] and nearest[-2:] == [6, 6] and nearest == sorted(nearest)
    for i, s in enumerate(nearest):  # each index lies in its tile, as central as any tile allows
        assert s <= i < s + 4
        assert abs(i + 0.5 - (s + 2)) <= min(abs(i + 0.5 - (t + 2)) for t in [0, 2, 4, 6])


def test_no_tiling_up_to_the_tile_size(models):
    whole, tiled = models
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(whole.encode(x), tiled.encode(x))
    codes = whole.encode(x)
    assert torch.equal(whole.decode(codes), tiled.decode(codes))


def test_tiled_encode_takes_each_code_from_its_most_central_tile(models):
    whole, tiled = models
    x = torch.rand(2, 3, 24, 44) * 2 - 1  # 6x11 codes
    codes = tiled.encode(x)
    assert codes.shape == (2, 6, 11)
    rows, cols = tile_starts(6, 4), tile_starts(11, 4)
    row_of, col_of = nearest_tile(6, rows, 4), nearest_tile(11, cols, 4)
    for y in range(6):
        for x_ in range(11):
            r, c = row_of[y], col_of[x_]
            own = whole.encode(x[:, :, r * 4:(r + 4) * 4, c * 4:(c + 4) * 4])
            assert torch.equal(codes[:, y, x_], own[:, y - r, x_ - c])
    strip = torch.rand(1, 3, 8, 40) * 2 - 1  # shorter than a tile: the whole height in each tile
    assert tiled.encode(strip).shape == (1, 2, 10)


def test_decoding_stays_whole(models):
    whole, tiled = models
    codes = torch.randint(0, 32, (2, 4, 10))
    assert torch.equal(tiled.decode(codes), whole.decode(codes))


def test_tile_must_hold_whole_half_tiles():
    assert ModelConfig(**ARCH, encode_tile=16).encode_tile == 16
    with pytest.raises(RecipeError, match=r"model.encode_tile = 12 is invalid: expected 0 or a multiple of twice the factor"):
        ModelConfig(**ARCH, encode_tile=12)


def test_tile_travels_in_the_bundle(models, tmp_path):
    _, tiled = models
    tiled.save(tmp_path / "tiled.safetensors")
    assert Stage1Model.load(tmp_path / "tiled.safetensors").model_config.encode_tile == 16
