"""The coordinates plugin: the reference coord stage (a normalised ramp, area-downsampled and binned)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqtoolkit.errors import RecipeError, VqtError

from .conftest import cond


def test_coordinates_match_the_reference_coord_stage():
    c, o = cond("coordinates", n_codes=4, down_factor=8)
    assert (c.kind, c.has_stage, c.vocab_size(o, None)) == ("positional", False, 4)
    raw = c.from_item({"image": torch.zeros(3, 16, 24)}, o)
    assert raw.shape == (1, 16, 24)
    assert torch.allclose(raw.flatten(), torch.arange(16 * 24) / (16 * 24))
    tokens = c.tokens(raw[None], o, None)
    assert tokens.shape == (1, 2, 3)
    cells = raw[0].numpy().reshape(2, 8, 3, 8).mean(axis=(1, 3))  # area-downsampled by hand
    assert tokens[0].tolist() == np.clip(np.round(cells * 4), 0, 3).astype(int).tolist()
    assert torch.equal(c.read("full", (16, 24), o), raw)
    assert c.render(raw, o).shape == (16, 24, 3)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o: c.read("map.npy", (16, 16), o),
                 VqtError, r"pass --cond full .*not 'map.npy'", id="read-a-file"),
    pytest.param(lambda c, o: c.tokens(torch.zeros(1, 1, 16, 12), o, None),
                 VqtError, r"12x16 are not whole 8x8 cells \(condition.down_factor = 8\)", id="tokens-partial-cells"),
    pytest.param(lambda c, o: c.tokens(torch.full((1, 1, 8, 8), 2.0), o, None),
                 VqtError, r"must lie in \[0, 1\]", id="tokens-out-of-range"),
    pytest.param(lambda c, o: c.tokens(torch.zeros(1, 2, 8, 8), o, None),
                 VqtError, "expects raw maps of 1 channel", id="tokens-two-channels"),
    pytest.param(lambda c, o: cond("coordinates", down_factor=0),
                 RecipeError, "condition.down_factor = 0 is invalid", id="option-down_factor"),
])
def test_coordinates_errors(call, error, message):
    c, o = cond("coordinates", n_codes=16, down_factor=8)
    with pytest.raises(error, match=message):
        call(c, o)
