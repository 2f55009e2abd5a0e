"""The superres plugin: a blurred, downsampled copy of the image, or a small image read and upsampled."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vqtoolkit.errors import ImageError, RecipeError, VqtError

from .conftest import cond


def test_superres_degrades_and_reads_small_images(tmp_path, item):
    c, o = cond("superres")
    raw = c.from_item(item, o)
    assert raw.shape == (3, 32, 32) and float(raw.abs().max()) <= 1 and c.stage_channels(o) == 3
    flat = c.from_item({"image": torch.full((3, 32, 32), 0.25)}, o)
    assert torch.allclose(flat, torch.full((3, 32, 32), 0.25), atol=1e-5)
    assert (raw - item["image"]).abs().mean() > 0.01  # the detail is gone
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "small.png")
    up = c.read(str(tmp_path / "small.png"), (48, 64), o)
    assert up.shape == (3, 48, 64) and torch.allclose(up[0], torch.ones(48, 64), atol=1e-5)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o, files: c.read(str(files / "small.png"), (4, 4), o),
                 ImageError, r"small.png is 8x6, larger than --size 4x4; give the small image", id="file-too-large"),
    pytest.param(lambda c, o, files: c.read(str(files / "cut.png"), (48, 64), o),
                 ImageError, r"cut.png is (truncated|not an image file)", id="file-truncated"),
    pytest.param(lambda c, o, files: cond("superres", factor=1),
                 RecipeError, r"condition.factor = 1 is invalid", id="option-factor"),
    pytest.param(lambda c, o, files: c.from_item({"image": torch.zeros(1, 32, 32)}, o),
                 VqtError, "expects raw maps of 3 channel", id="item-one-channel"),
])
def test_superres_errors(tmp_path, call, error, message):
    c, o = cond("superres")
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "small.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "small.png").read_bytes()[:40])
    with pytest.raises(error, match=message):
        call(c, o, tmp_path)
