"""examples/vqt-normals as a user installs it: listed by `vqt plugins`, trained, sampled with --cond.

Installing means what pip leaves behind: the package's folder on sys.path and a dist-info whose
entry_points.txt is written from the example's own pyproject.toml (so a broken entry point fails here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.cli import cli
from vqtoolkit_plugins.synthetic.render import render_scene

from .conftest import install_example
from .test_modalities_e2e import TINY, TINY_GPT, sets, vqt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vqt-normals"


@pytest.fixture
def normals_installed(tmp_path, monkeypatch):
    yield install_example(EXAMPLE, tmp_path / "site", monkeypatch)
    sys.modules.pop("vqt_normals", None)


def test_normals_are_listed(normals_installed):
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    entry = next(p for p in data["plugins"] if p["name"] == "normals")
    assert entry["source"] == "vqt-normals 0.1.0" and entry["error"] is None
    assert entry["hooks"] == ["vqt_register_conditions"] and entry["conditions"] == ["normals"]
    assert data["conditions"]["normals"]["kind"] == "spatial"


def test_normals_of_a_tilted_plane(normals_installed):
    import vqt_normals

    depth = torch.arange(8.0).repeat(6, 1)  # (6, 8): deeper to the right, one step per column
    n = vqt_normals.normals(depth)
    assert n.shape == (3, 6, 8) and torch.allclose(n.norm(dim=0), torch.ones(6, 8))
    slope = 8 / 7  # min-max normalised, scaled by the width: 8 / 7 per column
    expected = torch.tensor([-slope, 0.0, 1.0]) / (1 + slope**2) ** 0.5
    assert torch.allclose(n[:, 2, 3], expected)


def test_normals_train_and_sample(normals_installed, tmp_path):
    first = tmp_path / "vq"
    vqt("train-stage1", str(ROOT / "recipes" / "quickstart.toml"), "--out", str(first), "--device", "cpu",
        *sets(TINY + ["train.max_steps=4"]))
    stage = tmp_path / "stage"
    vqt("train-stage1", str(EXAMPLE / "normals-stage.toml"), "--out", str(stage), "--device", "cpu",
        *sets(TINY + ["train.max_steps=2"]))
    run = tmp_path / "run"
    vqt("train-stage2", str(EXAMPLE / "normals.toml"), "--out", str(run), "--device", "cpu",
        *sets(TINY_GPT + [f"transformer.first_stage={first / 'last.safetensors'}",
                          f"condition.stage={stage / 'last.safetensors'}"]))
    assert list((run / "samples").glob("samples_*.png"))

    depth = tmp_path / "depth.npy"
    np.save(depth, render_scene(2, (48, 64)).depth)
    out = tmp_path / "out"
    vqt("sample", "--model", str(run / "last.safetensors"), "--cond", str(depth), "--size", "64x48",
        "--n", "2", "-o", str(out), "--device", "cpu")
    assert Image.open(out / "sample_0001.png").size == (64, 48)
    import vqt_normals

    picture = vqt_normals.NormalsCondition().render(vqt_normals.normals(torch.from_numpy(np.load(depth))), None)
    grid = np.asarray(Image.open(out / "grid.png"))
    np.testing.assert_array_equal(grid[2:50, 2:66], picture)
