"""The segmentation plugin: one-hot label maps from items and label files, a palette picture, every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.errors import DataError, ImageError, RecipeError, VqtError
from vqtoolkit_plugins.synthetic.render import N_LABELS

from .conftest import cond, save_grey


def test_segmentation_from_item_is_one_hot_of_labels(item):
    c, o = cond("segmentation")
    raw = c.from_item(item, o)
    assert raw.shape == (N_LABELS, 32, 32) and raw.dtype == torch.float32
    assert torch.equal(raw.sum(0), torch.ones(32, 32))
    assert torch.equal(raw.argmax(0), torch.from_numpy(item["paired"]["segmentation"]))
    assert c.stage_channels(o) == N_LABELS


@pytest.mark.parametrize("kind", ["L", "I;16", "P", "npy"])
def test_segmentation_reads_label_maps(tmp_path, kind):
    c, o = cond("segmentation", n_labels=5)
    labels = np.arange(12).reshape(3, 4) % 5
    if kind == "npy":
        path = str(tmp_path / "labels.npy")
        np.save(path, labels)
    elif kind == "P":
        img = Image.fromarray(labels.astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 753)
        path = str(tmp_path / "labels.png")
        img.save(path)
    else:
        path = save_grey(tmp_path / "labels.png", labels, kind)
    raw = c.read(path, (3, 4), o)
    assert raw.shape == (5, 3, 4)
    assert torch.equal(raw.argmax(0), torch.from_numpy(labels))


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o, files, item: c.read(str(files / "labels.png"), (3, 4), o),
                 VqtError, r"labels.png holds label 7, but condition.n_labels = 4", id="file-label-too-large"),
    pytest.param(lambda c, o, files, item: c.read(str(files / "labels.png"), (6, 8), o),
                 ImageError, r"labels.png is 4x3 but --size is 8x6", id="file-size"),
    pytest.param(lambda c, o, files, item: c.read(str(files / "rgb.png"), (3, 4), o),
                 ImageError, "is a RGB image; expected palette or greyscale", id="file-rgb"),
    pytest.param(lambda c, o, files, item: c.read(str(files / "missing.png"), (3, 4), o),
                 ImageError, "does not exist", id="file-missing"),
    pytest.param(lambda c, o, files, item: c.from_item(item, o),
                 VqtError, r"synthetic/000001.*holds label 5, but condition.n_labels = 4", id="item-label-too-large"),
    pytest.param(lambda c, o, files, item: cond("segmentation", n_labels=1),
                 RecipeError, r"condition.n_labels = 1 is invalid", id="option-n_labels"),
    pytest.param(lambda c, o, files, item: cond("segmentation", n_label=3),
                 RecipeError, r"unknown key 'condition.n_label'; did you mean 'n_labels'", id="option-misspelt"),
    pytest.param(lambda c, o, files, item: c.from_item({"name": "x", "image": torch.zeros(3, 4, 4)}, o),
                 DataError, r"item 'x' has no segmentation", id="item-without-labels"),
])
def test_segmentation_errors(tmp_path, item, call, error, message):
    c, o = cond("segmentation", n_labels=4)
    save_grey(tmp_path / "labels.png", np.full((3, 4), 7))
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(error, match=message):
        call(c, o, tmp_path, item)


def test_segmentation_render_is_palette_of_argmax():
    c, o = cond("segmentation", n_labels=3)
    logits = torch.tensor([[[5.0, 0.0]], [[0.0, 0.0]], [[1.0, 9.0]]])  # (3, 1, 2): labels 0 and 2
    picture = c.render(logits, o)
    assert picture.shape == (1, 2, 3) and picture.dtype == np.uint8
    assert picture[0, 0].tolist() == [0, 0, 0] and picture[0, 1].tolist() == [0, 128, 0]  # VOC colours
    with pytest.raises(VqtError, match=r"expects raw maps of 3 channel\(s\).*got shape \(2, 1, 2\)"):
        c.render(logits[:2], o)
