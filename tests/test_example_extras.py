"""examples/vqt-extras as a user installs it: `vqt plugins` lists its data source and quantizer, and
stage 1 trains with both from the example's recipe; the quantizer keeps the quantizer contract."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.cli import cli
from vqtoolkit.stage1 import Stage1Model

from .conftest import install_example
from .test_modalities_e2e import sets, vqt

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vqt-extras"
TINY = ["data.size=32", "model.ch_mult=[1,2]", "model.z_channels=16", "model.resolution=32",
        "quantizer.embed_dim=16", "quantizer.codes_per_stage=4", "train.max_steps=3", "train.batch_size=2",
        "train.checkpoint_every=1000", "train.sample_every=1000", "train.log_every=1000",
        "train.channels_last=false"]


@pytest.fixture
def extras(tmp_path, monkeypatch):
    yield install_example(EXAMPLE, tmp_path / "site", monkeypatch)
    for name in [m for m in sys.modules if m.startswith("vqt_extras")]:
        del sys.modules[name]


def photos(folder: Path) -> Path:
    """Six images listed in folder/photos.csv, two of them held out (split = val)."""
    rng = np.random.default_rng(0)
    rows = ["file,split"]
    for i in range(6):
        name = f"images/{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name)
        rows.append(f"{name},{'val' if i >= 4 else 'train'}")
    (folder / "photos.csv").write_text("\n".join(rows) + "\n")
    return folder / "photos.csv"


def test_plugins_lists_the_source_and_the_quantizer(extras):
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    entry = next(p for p in data["plugins"] if p["name"] == "extras")
    assert entry["source"] == "vqt-extras 0.1.0" and entry["error"] is None
    assert entry["data_sources"] == ["csv"] and entry["quantizers"] == ["residual"]
    assert data["data_sources"]["csv"]["plugin"] == data["quantizers"]["residual"]["plugin"] == "extras"


def test_stage1_trains_with_the_csv_source_and_the_residual_quantizer(extras, tmp_path):
    listing = photos(tmp_path)
    run = tmp_path / "run"
    vqt("train-stage1", str(EXAMPLE / "csv.toml"), "--out", str(run), "--device", "cpu",
        *sets(TINY + [f"data.csv={listing}", "data.column=file"]))
    recipe = tomllib.loads((run / "recipe.toml").read_text())
    assert (recipe["data"]["csv"], recipe["data"]["column"], recipe["data"]["split_column"]) == (
        str(listing), "file", "split")  # the source's own keys, stored with the run
    assert recipe["quantizer"]["kind"] == "residual"
    model = Stage1Model.load(run / "last.safetensors")
    assert model.n_codes == 16  # codes_per_stage squared
    codes = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert codes.shape == (1, 16, 16) and int(codes.max()) < 16
    assert model.decode(codes).shape == (1, 3, 32, 32)

    from vqt_extras.csv_source import CsvOptions, read_rows

    options = CsvOptions(csv=str(listing), column="file", split_column="split")
    assert read_rows(options, "val") == ["images/4.png", "images/5.png"]  # held out, the rest trains
    assert read_rows(CsvOptions(csv=str(listing), column="file"), "val") == []  # no split column: none held out


def test_residual_indices_give_back_the_quantized_map(extras):
    from vqt_extras.residual import ResidualVQ

    torch.manual_seed(0)
    quantizer = ResidualVQ(embed_dim=8, codes_per_stage=5, beta=0.25).eval()
    z = torch.randn(2, 8, 3, 4)
    quantized, indices, loss, stats = quantizer(z)
    assert torch.equal(quantizer.indices_to_quantized(indices), quantized)
    first = quantizer.first.weight[indices // 5].permute(0, 3, 1, 2)
    assert (z - first).pow(2).sum(1).mean() >= (z - quantized).pow(2).sum(1).mean()  # stage 2 helps
    assert set(stats) >= {"usage", "perplexity"} and loss.ndim == 0


def test_bad_csv_is_named(extras, tmp_path):
    listing = photos(tmp_path)
    result = CliRunner().invoke(cli, ["train-stage1", str(EXAMPLE / "csv.toml"), "--out",
                                      str(tmp_path / "run"), "--device", "cpu",
                                      *sets(TINY + [f"data.csv={listing}", "data.column=path"])])
    assert result.exit_code == 1 and "has no column 'path' (its columns: file, split)" in result.output
