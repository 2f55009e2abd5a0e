"""Editing: inpainting (`vqt sample --init --mask`) and outpainting (`--init` on a larger `--size`).

Tiny random models and fixed seeds: kept codes stay bit for bit, the sampler is a plain reference loop
token for token at stride 1 (and follows the placement rule at larger strides), and mistakes name
the file and what was expected.
"""

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.anchors import ANCHORS, anchor_offset
from vqtoolkit.cli import cli
from vqtoolkit.codes import load_codes
from vqtoolkit.editing import code_mask, place, sample_masked
from vqtoolkit.errors import VqtError
from vqtoolkit.images import to_tensor
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.plugins import get_condition
from vqtoolkit.recipes import ModelConfig, QuantizerConfig
from vqtoolkit.sampling import GuidedGPT, sample_sliding, window_start
from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.stage2 import Stage2Model

WINDOW = 4  # codes; the VQGAN has f = 4, so the window is 16x16 pixels


def tiny_gpt(vocab: int = 16, block_size: int = 32, seed: int = 0) -> GPT:
    """Large random matrices (zero biases, identity LayerNorms), so the argmax follows the context: a
    code dropped from or changed in the middle of a context moves it about half the time. (Random
    biases and LayerNorm gains as well would fix the argmax whatever the context.)"""
    gpt = GPT(GPTConfig(vocab, block_size, 2, 2, 16)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return gpt


def prefix_for_window(top: int, left: int) -> torch.Tensor:
    """Condition tokens that depend on the window, as a cropped condition grid's would."""
    return torch.tensor([[top, left, (3 * top + left) % 16], [left, top, 7]])  # (2, 3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def reference_inpaint(gpt, prefix_fn, codes, mask, window, stride=1):
    """Greedy, one uncached forward per masked code in raster order: the condition tokens, then the
    window's codes before the target (rows above, then its row from the window's left edge). The
    window is the sliding sampler's: top window_start(i), left from the placement holding column j."""
    (B, H, W), (h, w) = codes.shape, window
    idx = codes.clone()
    for i in range(H):
        top = window_start(i, H, h)
        for j in range(W):
            if not mask[i, j]:
                continue
            left = window_start(j - j % stride + stride // 2, W, w)
            seq = torch.cat([prefix_fn(top, left), idx[:, top:i, left:left + w].reshape(B, -1),
                             idx[:, i, left:j]], dim=1)
            idx[:, i, j] = gpt(seq)[:, -1].argmax(-1)
    return idx


def random_case(seed: int = 0, grid=(7, 11)):
    g = gen(seed)
    codes = torch.randint(16, (2, *grid), generator=g)  # (2, H, W)
    mask = torch.rand(grid, generator=g) < 0.4  # (H, W)
    return codes, mask


# the sampler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("window, stride", [((4, 4), 1), ((3, 5), 1), ((4, 4), 2), ((4, 4), 3), ((3, 5), 5)])
def test_masked_sampler_is_the_reference_loop_token_for_token(window, stride):
    gpt = tiny_gpt()
    codes, mask = random_case()
    ours = sample_masked(gpt, prefix_for_window, codes, mask, window, stride=stride, top_k=1)
    assert torch.equal(ours, reference_inpaint(gpt, prefix_for_window, codes, mask, window, stride))
    assert not torch.equal(ours[:, mask], codes[:, mask])  # something was resampled


def test_unmasked_codes_are_unchanged_bit_for_bit():
    codes, mask = random_case(1)
    out = sample_masked(tiny_gpt(), prefix_for_window, codes, mask, (4, 4), stride=2, generator=gen(3))
    assert torch.equal(out[:, ~mask], codes[:, ~mask])
    assert out.dtype == torch.long and out.shape == codes.shape


def test_a_mask_of_nothing_returns_the_codes_without_running_the_model():
    codes, _ = random_case()
    calls = []
    out = sample_masked(tiny_gpt(), lambda t, l: calls.append((t, l)), codes, torch.zeros(7, 11, dtype=torch.bool),
                        (4, 4), stride=2)
    assert torch.equal(out, codes) and out is not codes and calls == []


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_a_mask_of_everything_is_sliding_sampling(stride):
    gpt = tiny_gpt()
    codes, _ = random_case()
    full = torch.ones(7, 11, dtype=torch.bool)
    ours = sample_masked(gpt, prefix_for_window, codes, full, (4, 4), stride=stride, generator=gen(5))
    assert torch.equal(ours, sample_sliding(gpt, prefix_for_window, (7, 11), (4, 4), stride=stride, generator=gen(5)))


def test_progress_counts_the_masked_codes():
    codes, mask = random_case()
    calls = []
    sample_masked(tiny_gpt(), prefix_for_window, codes, mask, (4, 4), stride=2, progress=lambda *a: calls.append(a))
    total = int(mask.sum())
    assert calls == [(k, total) for k in range(1, total + 1)]


def test_a_mask_of_another_grid_is_refused():
    codes, _ = random_case()
    with pytest.raises(VqtError, match=r"mask must be a bool \(7, 11\) tensor, as the code grid"):
        sample_masked(tiny_gpt(), prefix_for_window, codes, torch.ones(7, 10, dtype=torch.bool), (4, 4))


def test_a_code_is_resampled_when_any_pixel_of_its_cell_is_masked():
    pixels = torch.zeros(8, 12, dtype=torch.bool)
    pixels[5, 2] = True  # one pixel of cell (1, 0)
    pixels[0:4, 8:12] = True  # the whole cell (0, 2)
    assert code_mask(pixels, 4).tolist() == [[False, False, True], [True, False, False]]


@pytest.mark.parametrize("anchor, expected", [("center", (1, 2)), ("top-left", (0, 0)), ("top", (0, 2)),
                                              ("right", (1, 4)), ("bottom-left", (3, 0)), ("bottom-right", (3, 4))])
def test_anchors_place_the_image_on_the_canvas(anchor, expected):
    assert anchor_offset((4, 4), (7, 8), anchor) == expected  # a centred odd margin puts the extra row below
    codes = torch.arange(16).reshape(4, 4)
    canvas, resample = place(codes, None, (7, 8), anchor)
    top, left = expected
    assert torch.equal(canvas[top:top + 4, left:left + 4], codes)
    assert not resample[top:top + 4, left:left + 4].any() and int(resample.sum()) == 7 * 8 - 16


def test_an_unknown_anchor_is_named_with_the_choices():
    with pytest.raises(VqtError, match="--anchor 'centre' is not one of center, .*; did you mean 'center'"):
        anchor_offset((4, 4), (7, 8), "centre")
    assert len(ANCHORS) == 9


# the model: Stage2Model.edit -------------------------------------------------------------------


@pytest.fixture(scope="module")
def first():
    torch.manual_seed(0)
    return Stage1Model.build(ModelConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                                         z_channels=8, resolution=16), QuantizerConfig(embed_dim=8, options={"n_codes": 16}))


def condition(name: str, **options) -> ConditionSpec:
    found = get_condition(name)
    return ConditionSpec(found, found.parse_options(options, "test"), None)


def model(first, spec=None, seed=0) -> Stage2Model:
    prefix = WINDOW * WINDOW if spec is not None and spec.grid_like else 1
    return Stage2Model(first, tiny_gpt(16, prefix + WINDOW * WINDOW, seed), WINDOW, spec)


def picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=gen(seed)) * 2 - 1  # (3, H, W) in [-1, 1]


def test_edit_with_a_class_and_guidance_is_the_reference_loop(first):
    """Stride 1, class 2, guidance 2: the guided GPT over the class token, in the reference loop."""
    m = model(first, condition("class", n_classes=4))
    image = picture(24, 32)
    pixels = torch.zeros(24, 32, dtype=torch.bool)
    pixels[6:17, 9:30] = True
    _, codes = m.edit(image, 1, mask=pixels, cond=torch.tensor([2]), cfg_scale=2.0, top_k=1, window_stride=1)
    known = first.encode(image[None])  # (1, 6, 8)
    guided = GuidedGPT(m.gpt, torch.tensor([4]), 2.0)
    expected = reference_inpaint(guided, lambda t, l: torch.tensor([[2]]), known, code_mask(pixels, 4), (4, 4))
    assert torch.equal(codes, expected)
    assert torch.equal(codes[:, ~code_mask(pixels, 4)], known[:, ~code_mask(pixels, 4)])


def test_edit_with_an_empty_mask_returns_the_image_codes(first):
    image = picture(16, 24)
    _, codes = model(first).edit(image, 2, mask=torch.zeros(16, 24, dtype=torch.bool), seed=3)
    assert torch.equal(codes, first.encode(image[None]).expand(2, 4, 6))


@pytest.mark.parametrize("anchor, top, left", [("center", 1, 2), ("top-left", 0, 0), ("bottom-right", 2, 4)])
def test_outpainting_keeps_the_init_codes_at_the_anchor(first, anchor, top, left):
    m = model(first, condition("coordinates", n_codes=16, down_factor=4))
    image = picture(16, 16)
    calls = []
    _, codes = m.edit(image, 2, size=(24, 32), anchor=anchor, cond=get_condition("coordinates").read(
        "full", (24, 32), m.condition.options), progress=lambda *a: calls.append(a), window_stride=2)
    assert codes.shape == (2, 6, 8)
    assert torch.equal(codes[:, top:top + 4, left:left + 4], first.encode(image[None]).expand(2, 4, 4))
    assert calls[-1] == (2 * (48 - 16), 2 * (48 - 16))  # only the new area is sampled


# the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(first, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit")
    model(first).save(folder / "gpt.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(folder / "init.png")
    mask = np.zeros((16, 24), np.uint8)
    mask[2:9, 13:22] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


def init_codes(first, files) -> torch.Tensor:
    """The codes of init.png as the command encodes it: (1, 4, 6)."""
    return first.encode(to_tensor(np.array(Image.open(files / "init.png")))[None])


def vqt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_inpainting_command_keeps_unmasked_codes_and_refuses_to_overwrite(files, first, tmp_path):
    args = ["sample", "--model", files / "gpt.safetensors", "--init", files / "init.png", "--mask",
            files / "mask.png", "--n", "2", "--codes", "-o", tmp_path / "out", "--device", "cpu"]
    result = vqt(*args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 sample(s) of 24x16 (6x4 codes)" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["codes.npy", "grid.png", "sample_0000.png",
                                                                   "sample_0001.png"]
    codes = torch.from_numpy(load_codes(tmp_path / "out" / "codes.npy"))  # (2, 4, 6)
    known = init_codes(first, files)  # (1, 4, 6)
    kept = torch.ones(4, 6, dtype=torch.bool)
    kept[0:3, 3:6] = False  # mask rows 2..8, columns 13..21: the cells they touch
    assert torch.equal(codes[:, kept], known.expand(2, 4, 6)[:, kept])
    again = vqt(*args)
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output


def test_outpainting_command_grows_the_canvas(files, first, tmp_path):
    result = vqt("sample", "--model", files / "gpt.safetensors", "--init", files / "init.png", "--size", "32x24",
                 "--anchor", "bottom-left", "--codes", "-o", tmp_path / "o.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    codes = torch.from_numpy(load_codes(tmp_path / "o.npy"))  # (1, 6, 8)
    known = init_codes(first, files)  # (1, 4, 6)
    assert torch.equal(codes[:, 2:6, 0:6], known)
    assert Image.open(tmp_path / "o.png").size == (32, 24)


def save(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("small mask", r"--mask .*small\.png is 12x8 pixels but the --init image is 24x16; the mask must have"),
    ("text mask", r"--mask: image .*mask\.txt is not an image file Pillow can read"),
    ("large init", r"--init .*init\.png is 24x16 pixels, larger than --size 20x16; outpainting needs a canvas"),
    ("odd init", r"--init .*odd\.png is 22x16; the model needs multiples of 4: use 20x16 or 24x16, or crop or pad"),
    ("mask alone", r"--mask edits an image: pass the image with --init"),
    ("init alone", r"--init .*init\.png alone leaves nothing to sample: pass --mask to inpaint, or a larger --size"),
])
def test_editing_mistakes_name_the_file_and_what_was_expected(files, tmp_path, case, message):
    base = ["sample", "--model", files / "gpt.safetensors", "-o", tmp_path / "o.png", "--device", "cpu"]
    init = ["--init", files / "init.png"]
    args = {
        "small mask": init + ["--mask", save(tmp_path / "small.png", np.zeros((8, 12), np.uint8))],
        "text mask": init + ["--mask", tmp_path / "mask.txt"],
        "large init": init + ["--size", "20x16"],
        "odd init": ["--init", save(tmp_path / "odd.png", np.zeros((16, 22, 3), np.uint8))],
        "mask alone": ["--size", "24x16", "--mask", files / "mask.png"],
        "init alone": init,
    }[case]
    (tmp_path / "mask.txt").write_text("not a picture")
    result = vqt(*base, *args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "o.png").exists()
