"""WebDataset shards: `vqt shard`, the `webdataset` source, its items, errors, and training on it."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.cli import cli
from vqtoolkit.data import ImageFolder, PairedFolder
from vqtoolkit.errors import DataError, VqtError
from vqtoolkit.plugins import get_data_source
from vqtoolkit.recipes import recipe_from_dict
from vqtoolkit_plugins.shards.reader import ShardDataset

from .conftest import write
from .plugins.conftest import cond
from .test_paired import paired_root  # noqa: F401  (a fixture)
from .test_train_stage1 import TINY

pytest.importorskip("webdataset")


def make_folder(root, n=7):
    """n small RGB images of different shapes, one in a sub-folder and one with a dot in its name."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / ("sub" if i == 3 else "") / (f"img.{i}.png" if i == 5 else f"img{i}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8)).save(path)
    return root


def shard(*args):
    return CliRunner().invoke(cli, ["shard", *map(str, args)])


@pytest.fixture
def shards(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    result = shard(folder, "-o", tmp_path / "shards", "--per-shard", 3)
    assert result.exit_code == 0, result.output
    assert "wrote 7 samples in 3 shards" in result.output
    return folder, tmp_path / "shards"


def same_items(a, b, n, train):
    for i in range(n):
        torch.manual_seed(i)
        x = a[i]
        torch.manual_seed(i)
        y = b[i]
        assert torch.equal(x["image"], y["image"]), (i, x["name"], y["name"])
        if "crop" in x:
            assert torch.equal(x["crop"], y["crop"])
        yield x, y


@pytest.mark.parametrize("train", [True, False])
def test_folder_round_trip_gives_the_folder_items(shards, train):
    folder, out = shards
    config = recipe_from_dict({"data": {"source": "webdataset", "urls": f"{out}/shard-{{000000..000002}}.tar",
                                        "size": 16}}).data
    data = get_data_source("webdataset").dataset(config, config.options, channels=3, augment=train, seed=0)
    images = ImageFolder(folder, 16, train=train)
    assert len(data) == len(images) == 7
    for x, y in same_items(data, images, 7, train):
        assert x["name"] == y["name"].rsplit(".", 1)[0].replace("img.5", "img_5")


def test_paired_round_trip_with_depth_segmentation_pose_and_labels(paired_root, tmp_path):  # noqa: F811
    result = shard(paired_root, "-o", tmp_path / "s")
    assert result.exit_code == 0, result.output
    data = ShardDataset(str(tmp_path / "s" / "shard-000000.tar"), 16, train=True)
    folder = PairedFolder(paired_root, 16, train=True)
    conditions = [cond(name) for name in ("depth", "segmentation", "pose", "edge")]
    data = pickle.loads(pickle.dumps(data))  # as spawned workers receive it
    for x, y in same_items(data, folder, 2, True):
        x = pickle.loads(pickle.dumps(x))  # as items come back from workers
        assert x["name"] == y["name"] and torch.equal(x["label"], y["label"])
        assert sorted(x["paired"]) == ["depth", "edge", "pose", "segmentation"]
        for condition, options in conditions:
            assert torch.equal(condition.from_item(x, options), condition.from_item(y, options)), condition.name


def test_parallel_trees_and_remote_shards_are_copied_once(paired_root, tmp_path):  # noqa: F811
    result = shard(paired_root / "images", "-o", tmp_path / "s", "--per-shard", 1,
                   "--paired", f"depth={paired_root / 'depth'}")
    assert result.exit_code == 0, result.output
    cache = tmp_path / "cache"
    urls = f"pipe:cat {tmp_path}/s/shard-000000.tar::pipe:cat {tmp_path}/s/shard-{{000001..000001}}.tar"
    data = ShardDataset(urls, 16, cache_dir=str(cache), train=False)
    assert [data[i]["name"] for i in range(2)] == ["cats/s0", "dogs/s1"] and len(list(cache.iterdir())) == 2
    assert sorted(data[0]["paired"]) == ["depth"]
    depth, options = cond("depth")
    torch.manual_seed(0)
    assert torch.equal(depth.from_item(data[1], options),
                       depth.from_item(PairedFolder(paired_root, 16, train=False)[1], options))


def test_missing_corrupt_and_truncated_shards_are_named(shards, tmp_path):
    _, out = shards
    with pytest.raises(DataError, match=r"7 of the 10 shards of data.urls do not exist \(first: .*shard-000003.tar"):
        ShardDataset(f"{out}/shard-{{000000..000009}}.tar", 16)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DataError, match=f"shard {bad} is not a readable tar file"):
        ShardDataset(str(bad), 16)
    cut = tmp_path / "cut.tar"
    whole = (out / "shard-000000.tar").read_bytes()
    for length in range(0, len(whole) // 2, 300):  # cut anywhere before the last member's end
        cut.write_bytes(whole[:length])
        with pytest.raises(DataError, match=f"shard {cut} (is truncated|is not a readable tar file)"):
            ShardDataset(str(cut), 16)
    with pytest.raises(DataError, match="not a valid shard pattern"):
        ShardDataset(f"{out}/shard-{{000000..000002.tar", 16)
    with pytest.raises(DataError, match="data.urls is empty"):
        ShardDataset("", 16)


def test_an_unreadable_image_in_a_shard_is_skipped_or_stops_strict_runs(tmp_path):
    folder = make_folder(tmp_path / "imgs", 3)
    (folder / "img1.png").write_bytes(b"garbage")
    assert shard(folder, "-o", tmp_path / "s").exit_code == 0
    urls = str(tmp_path / "s" / "shard-000000.tar")
    item = ShardDataset(urls, 16, train=False)[1]
    assert item["name"] == "img2" and item["skipped"].endswith("shard-000000.tar/img1.png")
    with pytest.raises(VqtError, match="shard-000000.tar/img1.png is not an image file"):
        ShardDataset(urls, 16, strict=True)[1]


def test_shard_never_overwrites_without_force(shards, tmp_path):
    folder, out = shards
    before = (out / "shard-000000.tar").read_bytes()
    result = shard(folder, "-o", out, "--per-shard", 100)
    assert result.exit_code == 1 and "already holds shards" in result.output and "--force" in result.output
    assert (out / "shard-000000.tar").read_bytes() == before
    result = shard(folder, "-o", out, "--per-shard", 100, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]  # stale shards removed


def test_without_the_package_the_error_names_the_pip_command(shards, monkeypatch):
    folder, out = shards
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(VqtError, match=r"pip install 'vqtoolkit\[webdataset\]'"):
        ShardDataset(f"{out}/shard-000000.tar", 16)
    result = shard(folder, "-o", out / "again")
    assert result.exit_code == 1 and "pip install 'vqtoolkit[webdataset]'" in result.output


def test_train_stage1_on_shards_through_the_cli_and_resume(shards, tmp_path):
    _, out = shards
    recipe = write(tmp_path / "tiny.toml", TINY.replace('source = "synthetic"', 'source = "webdataset"')
                   .replace("n = 24\nval_n = 4\n", f'urls = "{out}/shard-{{000000..000002}}.tar"\n'
                            f'val_urls = "{out}/shard-000002.tar"\n'))
    common = ["--set", "train.batch_size=2", "--set", "train.sample_every=100", "--set", "data.num_workers=1"]
    run = tmp_path / "run"
    first = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run), "--set", "train.max_steps=2",
                                     *common])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(run), "--resume", *common])
    assert resumed.exit_code == 0, resumed.output
    assert "finished at step 4" in resumed.output and "held-out: psnr" in resumed.output



def test_samples_must_carry_the_same_paired_files(tmp_path):
    import io

    import webdataset as wds

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    with open(tmp_path / "odd.tar", "wb") as f, wds.TarWriter(f, encoder=False) as tar:
        tar.write({"__key__": "a", "png": png.getvalue(), "depth.png": png.getvalue()})
        tar.write({"__key__": "b", "png": png.getvalue()})
    with pytest.raises(DataError, match=r"odd.tar: sample 'b' has paired files none but 'a' has \['depth'\]"):
        ShardDataset(str(tmp_path / "odd.tar"), 8)
    with open(tmp_path / "bare.tar", "wb") as f, wds.TarWriter(f, encoder=False) as tar:
        tar.write({"__key__": "c", "depth.png": png.getvalue()})
    with pytest.raises(DataError, match=r"bare.tar: sample 'c' has no image"):
        ShardDataset(str(tmp_path / "bare.tar"), 8)


def test_few_shards_stay_open_and_items_stay_right(shards, monkeypatch):
    import vqtoolkit_plugins.shards.reader as reader

    folder, out = shards
    monkeypatch.setattr(reader, "OPEN_SHARDS", 1)
    data = ShardDataset(f"{out}/shard-{{000000..000002}}.tar", 16, train=False)
    images = ImageFolder(folder, 16, train=False)
    for i in (0, 6, 3, 0, 4):
        assert torch.equal(data[i]["image"], images[i]["image"]) and len(data._files) == 1
