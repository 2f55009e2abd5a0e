"""The depth plugin: min-max normalised maps from items, PNG, NumPy and TIFF files; near is bright."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.errors import ImageError, VqtError

from .conftest import cond, save_grey


def test_depth_is_min_max_normalised(item):
    c, o = cond("depth")
    raw = c.from_item(item, o)
    d = torch.from_numpy(item["paired"]["depth"])
    assert raw.shape == (1, 32, 32) and c.stage_channels(o) == 1
    assert torch.allclose(raw[0], (d - d.min()) / (d.max() - d.min()) * 2 - 1)
    assert float(raw.min()) == -1 and float(raw.max()) == 1
    constant = c.from_item({"paired": {"depth": np.full((4, 5), 3.0, np.float32)}}, o)
    assert torch.equal(constant, torch.zeros(1, 4, 5))


def test_depth_uses_the_items_full_range():
    c, o = cond("depth")
    crop = np.array([[0.2, 0.4], [0.6, 0.6]], np.float32)
    item = {"paired": {"depth": crop}, "full_range": {"depth": torch.tensor([0.0, 1.0])}}
    assert torch.allclose(c.from_item(item, o)[0], torch.from_numpy(crop) * 2 - 1)
    assert float(c.from_item({"paired": {"depth": crop}}, o).min()) == -1  # without it: its own range
    flat = {"paired": {"depth": np.full((2, 2), 0.75, np.float32)}, "full_range": {"depth": torch.tensor([0.0, 1.0])}}
    assert torch.allclose(c.from_item(flat, o), torch.full((1, 2, 2), 0.5))  # a flat crop of a varied map


@pytest.mark.parametrize("suffix", [".png", ".npy", ".tiff"])
def test_depth_reads_files(tmp_path, suffix):
    c, o = cond("depth")
    values = np.arange(12).reshape(3, 4) * 1000
    path = str(tmp_path / f"depth{suffix}")
    if suffix == ".png":
        save_grey(path, values, "I;16")
    elif suffix == ".npy":
        np.save(path, values.astype(np.float64))
    else:
        Image.fromarray(values.astype(np.float32)).save(path)
    raw = c.read(path, (3, 4), o)
    assert torch.allclose(raw[0], torch.from_numpy(values / 11000 * 2 - 1).float())
    with pytest.raises(ImageError, match=rf"depth map .*depth{suffix} is 4x3 but --size is 4x4"):
        c.read(path, (4, 4), o)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o, files: c.read(str(files / "rgb.npy"), (3, 4), o),
                 ImageError, r"rgb.npy has shape \(3, 4, 3\); expected a single channel", id="file-three-channels"),
    pytest.param(lambda c, o, files: c.read(str(files / "nan.npy"), (3, 4), o),
                 ImageError, "non-finite", id="file-nan"),
    pytest.param(lambda c, o, files: c.render(torch.zeros(3, 2, 2), o),
                 VqtError, "expects raw maps of 1 channel", id="render-three-channels"),
])
def test_depth_errors(tmp_path, call, error, message):
    c, o = cond("depth")
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 3)))
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan))
    with pytest.raises(error, match=message):
        call(c, o, tmp_path)


def test_depth_render_shows_near_as_bright():
    c, o = cond("depth")
    picture = c.render(torch.tensor([[[-1.0, 1.0]]]), o)
    assert picture.tolist() == [[[255, 255, 255], [0, 0, 0]]]  # near (small) is bright
