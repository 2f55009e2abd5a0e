"""The edge plugin: Canny edges (suppression, hysteresis), items, edge maps and photos, channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.errors import ImageError, RecipeError, VqtError

from .conftest import cond, save_grey


def test_canny_finds_thin_step_edges():
    from vqtoolkit_plugins.edge import canny

    img = torch.zeros(40, 40)
    img[:, 20:] = 1.0  # a vertical step between columns 19 and 20
    edges = canny(img)
    rows = edges[2:-2]
    assert torch.equal(rows.sum(1), torch.ones(36, dtype=torch.long))  # one pixel wide: suppression works
    assert set(rows.nonzero()[:, 1].tolist()) <= {19, 20}
    assert not edges[0].any() and not edges[:, 0].any()  # the border is never an edge


def test_canny_hysteresis_keeps_weak_edges_only_when_linked():
    from vqtoolkit_plugins.edge import _connected_to, canny

    weak_only = torch.zeros(40, 40)
    weak_only[:, 20:] = 0.1  # gradient peak ~0.15: between LOW (0.1) and HIGH (0.2)
    assert not canny(weak_only).any()
    fading = torch.zeros(40, 40)
    fading[:, 20:] = torch.linspace(0.5, 0.08, 40)[:, None]  # strong at the top, weak below
    assert canny(fading)[3:-3].any(1).all()  # weak rows are kept: linked to the strong ones

    mask = torch.tensor([[1, 1, 0, 0, 1],
                         [0, 1, 0, 0, 1],
                         [0, 0, 1, 0, 0],
                         [1, 0, 0, 0, 1]], dtype=torch.bool)
    seeds = torch.zeros_like(mask)
    seeds[0, 0] = seeds[3, 4] = True
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [0, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)  # 8-connected to a seed
    assert torch.equal(_connected_to(mask, seeds), expected)


def test_edge_from_item_and_channels(item):
    c, o = cond("edge")
    raw = c.from_item(item, o)
    assert raw.shape == (1, 32, 32) and set(raw.unique().tolist()) <= {-1.0, 1.0}
    assert (raw == 1).any()
    c3, o3 = cond("edge", channels=3)
    raw3 = c3.from_item(item, o3)
    assert raw3.shape == (3, 32, 32) and torch.equal(raw3[2], raw[0]) and c3.stage_channels(o3) == 3
    with pytest.raises(RecipeError, match=r"condition.channels = 2 is invalid: expected 1 .* or 3"):
        cond("edge", channels=2)
    assert c.render(raw, o).shape == (32, 32, 3)
    with pytest.raises(VqtError, match="expects raw maps of 1 channel"):
        c.render(raw3, o)


def test_edge_reads_maps_and_photos(tmp_path):
    c, o = cond("edge")
    edge_map = np.zeros((6, 8), np.uint8)
    edge_map[3, :] = 255
    path = save_grey(tmp_path / "edges.png", edge_map)
    raw = c.read(path, (6, 8), o)
    assert torch.equal(raw[0], torch.from_numpy(edge_map / 127.5 - 1).float())
    photo = np.zeros((24, 24, 3), np.uint8)
    photo[:, 12:] = (200, 30, 30)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    raw = c.read(str(tmp_path / "photo.png"), (24, 24), o)
    assert set(raw.unique().tolist()) == {-1.0, 1.0}
    assert set((raw[0, 3:-3] == 1).nonzero()[:, 1].tolist()) <= {11, 12}
    with pytest.raises(ImageError, match=r"edges.png is 8x6 but --size is 6x8"):
        c.read(path, (8, 6), o)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bad.png is not an image file"):
        c.read(str(tmp_path / "bad.png"), (6, 8), o)
