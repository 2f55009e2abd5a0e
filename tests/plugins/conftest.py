"""Shared by the built-in plugins' tests: a condition with parsed options, a synthetic item, label files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqtoolkit.plugins import get_condition
from vqtoolkit_plugins.synthetic.dataset import SyntheticScenes


def cond(name: str, **options):
    c = get_condition(name)
    return c, c.parse_options(options, "test.toml")


@pytest.fixture(scope="module")
def item():
    return SyntheticScenes(4, 32, seed=3, train=False)[1]


def save_grey(path, array, mode="L"):
    Image.fromarray(array.astype(np.uint8 if mode in ("L", "P") else np.uint16), mode if mode != "I;16" else None
                    ).save(path)
    return str(path)
