"""Datasets: folder scanning, resizing and cropping, skipping bad files, list files, synthetic scenes."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqtoolkit.data import ImageFolder
from vqtoolkit.errors import DataError, ImageError, PluginError
from vqtoolkit.plugins import get_data_source
from vqtoolkit.recipes import recipe_from_dict
from vqtoolkit.images import to_tensor
from vqtoolkit_plugins.synthetic.dataset import SyntheticScenes
from vqtoolkit_plugins.synthetic.render import NEAR_DEPTH, PERSON, SKY_DEPTH, flip_pose, render_scene


def data_of(**table):
    """A [data] table as (DataConfig, its source's options): what DataSource methods take."""
    data = recipe_from_dict({"data": table}).data
    return data, data.options


def _img(path, mode="RGB", size=(40, 30), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    _img(root / "a.png")
    _img(root / "sub" / "deeper" / "b.JPG", "L", colour=90)
    _img(root / "sub" / "c.tiff", "RGBA", colour=(0, 0, 255, 0))  # fully transparent: white
    _img(root / ".hidden" / "x.png")
    _img(root / "._resource.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_recursion_and_modes(tree):
    ds = ImageFolder(tree, 16, train=False)
    assert ds.names == ["a.png", "sub/c.tiff", "sub/deeper/b.JPG"]
    items = [ds[i] for i in range(len(ds))]
    assert [it["name"] for it in items] == ds.names
    for it in items:
        assert it["image"].shape == (3, 16, 16) and it["image"].dtype == torch.float32
    assert torch.allclose(items[1]["image"], torch.ones(3, 16, 16))  # transparent -> white
    grey = items[2]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.allclose(grey, torch.tensor(90 / 127.5 - 1))
    one = ImageFolder(tree, 8, channels=1, train=False)[0]["image"]
    assert one.shape == (1, 8, 8)


def test_resize_smallest_side_then_centre_crop(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    item = ImageFolder(tmp_path, 10, train=False)[0]
    resized = np.asarray(Image.fromarray(arr).resize((20, 10), Image.Resampling.BICUBIC))
    assert torch.equal(item["image"], to_tensor(resized[:, 5:15]))


def test_train_crops_are_random_crops_and_flips(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    resized = to_tensor(np.asarray(Image.fromarray(arr).resize((20, 10), Image.Resampling.BICUBIC)))
    ds = ImageFolder(tmp_path, 10, train=True)
    windows = [resized[:, :, x : x + 10] for x in range(11)]
    found = set()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(30):
            img = ds[0]["image"]
            candidates = [(x, f, win.flip(-1) if f else win) for x, win in enumerate(windows) for f in (0, 1)]
            match = [(x, f) for x, f, win in candidates if torch.equal(img, win)]
            assert match, "a train item must be a crop (possibly flipped) of the resized image"
            found.add(match[0][1])
    assert found == {0, 1}


def test_skips_unreadable_files_and_records_them(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("oops")
    _img(tmp_path / "c.png", colour=(0, 255, 0))
    ds = ImageFolder(tmp_path, 8, train=False)
    assert len(ds) == 3
    item = ds[1]
    assert item["name"] == "c.png"  # item 1 falls back to the next readable file
    assert ds[1]["name"] == "c.png"
    assert len(ds.skipped) == 1
    path, reason = ds.skipped[0]
    assert path.endswith("b.png") and "not an image file" in reason
    assert "3 images" in ds.summary() and "1 skipped" in ds.summary() and "b.png" in ds.summary()

    strict = ImageFolder(tmp_path, 8, train=False, strict=True)
    with pytest.raises(ImageError, match=r"b\.png is not an image file"):
        strict[1]


def test_all_unreadable_is_a_data_error(tmp_path):
    (tmp_path / "a.png").write_text("x")
    (tmp_path / "b.jpg").write_text("y")
    with pytest.raises(DataError, match="none of the 2 images"):
        ImageFolder(tmp_path, 8)[0]


def test_list_file_relative_to_its_folder(tmp_path):
    a = _img(tmp_path / "imgs" / "a.png")
    b = _img(tmp_path / "elsewhere" / "b.png", colour=(1, 2, 3))
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(f"../imgs/a.png\n\n{b}\n")
    ds = ImageFolder(None, 8, train=False, list_file=lst)
    assert ds.names == ["../imgs/a.png", str(b)]
    assert ds[0]["image"].shape == (3, 8, 8)
    assert a.exists()


def test_list_file_errors(tmp_path, monkeypatch):
    _img(tmp_path / "imgs" / "a.png")
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lst.write_text("imgs/a.png\nmissing.png\n")  # written relative to the working directory
    monkeypatch.chdir(tmp_path)
    msg = r"2 of 2 listed images do not exist.*1 of them exist relative to the current"
    with pytest.raises(DataError, match=msg):
        ImageFolder(None, 8, list_file=lst)
    lst.write_text("\n")
    with pytest.raises(DataError, match="names no images"):
        ImageFolder(None, 8, list_file=lst)
    with pytest.raises(DataError, match=r"list file .*nope\.txt does not exist"):
        ImageFolder(None, 8, list_file=tmp_path / "nope.txt")


def test_empty_or_missing_root(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"data root .*empty holds no images \(looked for \.png, \.jpg"):
        ImageFolder(tmp_path / "empty", 8)
    with pytest.raises(DataError, match=r"data root .*absent is not a folder \(looked for \.png"):
        ImageFolder(tmp_path / "absent", 8)


def test_synthetic_items_and_determinism():
    ds = SyntheticScenes(5, 24, seed=3, train=False)
    item = ds[2]
    scene = render_scene(3 * 1_000_003 + 2, 24)
    assert item["name"] == "synthetic/000002"
    assert torch.equal(item["image"], to_tensor(scene.image))
    paired = item["paired"]
    np.testing.assert_array_equal(paired["depth"], scene.depth)
    assert paired["segmentation"].dtype == np.int64 and item["label"].item() == scene.label
    np.testing.assert_array_equal(paired["pose"], scene.pose)
    again = SyntheticScenes(5, 24, seed=3, train=False)[2]
    assert torch.equal(item["image"], again["image"])
    assert all(np.array_equal(paired[k], again["paired"][k]) for k in ("depth", "segmentation", "pose"))
    assert SyntheticScenes(2, 16, channels=1)[0]["image"].shape == (1, 16, 16)
    with pytest.raises(IndexError):
        ds[5]


def _flipped(ds, k):
    scene = render_scene(ds.seed * 1_000_003 + k, ds.size)
    return not torch.equal(ds[k]["image"], to_tensor(scene.image))


def test_synthetic_flips_follow_seed_and_epoch():
    ds = SyntheticScenes(16, 16, seed=1, train=True)
    first = [_flipped(ds, k) for k in range(16)]
    assert first == [_flipped(SyntheticScenes(16, 16, seed=1), k) for k in range(16)]
    assert 0 < sum(first) < 16
    ds.set_epoch(1)
    assert [_flipped(ds, k) for k in range(16)] != first


def test_synthetic_flip_is_consistent_across_modalities():
    ds = SyntheticScenes(16, 32, seed=0, train=True)
    k = next(k for k in range(16) if _flipped(ds, k))
    item, scene = ds[k], render_scene(k, 32)
    assert torch.equal(item["image"], to_tensor(np.ascontiguousarray(scene.image[:, ::-1])))
    paired = item["paired"]
    np.testing.assert_array_equal(paired["depth"], scene.depth[:, ::-1])
    np.testing.assert_array_equal(paired["segmentation"], scene.segmentation[:, ::-1])
    np.testing.assert_array_equal(paired["pose"], flip_pose(scene.pose, 32))
    for x, y, v in paired["pose"].tolist():
        if v == 2:  # a visible keypoint still lands on the person after the flip
            assert paired["segmentation"][int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] == PERSON


def test_synthetic_batches_collate():
    batch = next(iter(DataLoader(SyntheticScenes(4, 16), batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["paired"]["depth"].shape == (4, 16, 16)
    assert batch["paired"]["pose"].shape == (4, 17, 3) and batch["label"].shape == (4,)
    assert batch["name"] == [f"synthetic/{k:06d}" for k in range(4)]


def test_data_sources_build_their_datasets(tree):
    folder = get_data_source("folder").dataset(*data_of(root=str(tree), size=8), channels=3, augment=True, seed=0)
    assert isinstance(folder, ImageFolder)
    synth = get_data_source("synthetic").dataset(*data_of(source="synthetic", size=8, n=3), channels=3,
                                                 augment=True, seed=2)
    assert isinstance(synth, SyntheticScenes) and len(synth) == 3
    with pytest.raises(PluginError, match=r"unknown data source 'synthetc'; did you mean 'synthetic'\?"):
        get_data_source("synthetc")
    with pytest.raises(DataError, match="n must be at least 1"):
        SyntheticScenes(0, 8)


def test_synthetic_native_crops_of_large_scenes():
    ds = SyntheticScenes(6, 32, seed=2, train=False, scene_size=(72, 128))
    for k in range(6):
        item = ds[k]
        scene = render_scene(2 * 1_000_003 + k, (72, 128))
        image = item["image"].permute(1, 2, 0)  # (32, 32, 3)
        hits = [(t, l) for t in range(72 - 31) for l in range(128 - 31)
                if torch.equal(image, to_tensor(scene.image[t:t + 32, l:l + 32]).permute(1, 2, 0))]
        assert hits, "a held-out item is a crop of its scene, at native scale"
        t, l = hits[0]
        paired = item["paired"]
        np.testing.assert_array_equal(paired["depth"], scene.depth[t:t + 32, l:l + 32])
        np.testing.assert_array_equal(paired["segmentation"], scene.segmentation[t:t + 32, l:l + 32])
        assert item["full_range"]["depth"].tolist() == pytest.approx([NEAR_DEPTH, SKY_DEPTH])
        for x, y, v in paired["pose"].tolist():  # keypoints in crop pixels
            if v == 2:
                assert paired["segmentation"][int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] == PERSON
    again = SyntheticScenes(6, 32, seed=2, train=False, scene_size=(72, 128))
    again.set_epoch(3)  # held-out crops are fixed
    assert all(torch.equal(ds[k]["image"], again[k]["image"]) for k in range(6))
    assert len({tuple(ds[k]["image"][:, 0, 0].tolist()) for k in range(6)}) > 1


def test_synthetic_train_crops_follow_seed_and_epoch():
    ds = SyntheticScenes(8, 32, seed=1, train=True, scene_size=(144, 256))
    first = [ds[k]["image"] for k in range(8)]
    assert all(torch.equal(a, SyntheticScenes(8, 32, seed=1, scene_size=(144, 256))[k]["image"])
               for k, a in enumerate(first))  # deterministic per index: a resumed run sees the same
    ds.set_epoch(1)
    assert sum(not torch.equal(a, ds[k]["image"]) for k, a in enumerate(first)) >= 6
    whole = SyntheticScenes(8, 32, seed=1, train=True)  # flips as without scene_size
    assert [_flipped(whole, k) for k in range(8)] == [_flipped(SyntheticScenes(8, 32, seed=1), k) for k in range(8)]
    with pytest.raises(DataError, match="smaller than the 32-pixel crops"):
        SyntheticScenes(2, 32, scene_size=(24, 64))


def test_synthetic_scene_scale_crops_scenes_of_drawn_sizes():
    """data.scene_scale: each crop's scene is scene_size times a factor in [lo, hi], at least the crop."""
    ds = SyntheticScenes(6, 32, seed=2, train=False, scene_size=(72, 128), scene_scale=[0.5, 1.0])
    sizes = []
    for k in range(6):
        image = ds[k]["image"].permute(1, 2, 0)
        found = None
        sizes_to_try = [(h, w) for h in range(36, 73) for w in {round(128 * h / 72) + d for d in (-1, 0, 1)}
                        if 32 <= w <= 128]  # the sizes a factor can give: w follows h within rounding
        for h, w in sizes_to_try:
            scene = render_scene(2 * 1_000_003 + k, (h, w))
            if any(torch.equal(image, to_tensor(scene.image[t:t + 32, l:l + 32]).permute(1, 2, 0))
                   for t in range(h - 31) for l in range(w - 31)):
                found = h
                break
        assert found is not None, "each item is a native crop of its scene at some drawn size"
        sizes.append(found)
    assert len(set(sizes)) > 1 and min(sizes) < 72  # the scale varies, and goes below scene_size
    again = SyntheticScenes(6, 32, seed=2, train=False, scene_size=(72, 128), scene_scale=[0.5, 1.0])
    assert all(torch.equal(ds[k]["image"], again[k]["image"]) for k in range(6))  # held out: fixed
    with pytest.raises(DataError, match="scene scale"):
        SyntheticScenes(2, 32, scene_size=(72, 128), scene_scale=(0.5, 2.0))


def test_synthetic_whole_scene_depth_range_is_the_maps():
    item = SyntheticScenes(3, 24, seed=0, train=False)[1]
    depth = item["paired"]["depth"]
    assert item["full_range"]["depth"].tolist() == [float(depth.min()), float(depth.max())]


def test_synthetic_object_crops_centre_crops_on_objects():
    """data.object_crops: that fraction of crops lies on an object; the rest are the uniform crops."""
    def object_share(p: float) -> list[float]:
        ds = SyntheticScenes(24, 32, seed=4, train=False, scene_size=(144, 256), object_crops=p)
        return [float((ds[k]["paired"]["segmentation"] >= 2).mean()) for k in range(24)]

    uniform, centred = object_share(0.0), object_share(1.0)
    assert sum(s > 0 for s in centred) >= 22 > sum(s > 0 for s in uniform) + 6  # nearly every crop shows one
    assert np.mean(centred) > 3 * np.mean(uniform)
    half = object_share(0.5)
    assert 6 <= sum(a == b for a, b in zip(half, uniform)) <= 20  # the others keep their uniform crop
    assert half == object_share(0.5)  # held-out crops stay fixed
    with pytest.raises(DataError, match="object_crops"):
        SyntheticScenes(2, 32, object_crops=0.5)  # needs a scene size to crop from


def test_synthetic_source_passes_scene_size_and_world():
    data = data_of(source="synthetic", size=32, n=2, val_n=3, scene_size=[128, 72], world="graded",
                   scene_scale=[0.5, 1.0], object_crops=0.25)
    source = get_data_source("synthetic")
    train = source.dataset(*data, channels=3, augment=True, seed=1)
    held = source.held_out(*data, channels=3, seed=5)
    assert train.scene_size == held.scene_size == (72, 128) and train.world == held.world == "graded"
    assert train.scene_scale == held.scene_scale == (0.5, 1.0)
    assert (train.object_crops, held.object_crops) == (0.25, 0.0)  # held-out crops stay uniform
    assert len(held) == 3 and not held.train


def test_native_crops_are_not_resized(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    item = ImageFolder(tmp_path, 10, train=False, scale=1.0)[0]
    assert torch.equal(item["image"], to_tensor(arr[5:15, 15:25]))  # the centre 10x10, native pixels
    ds = ImageFolder(tmp_path, 10, train=True, scale=1.0)
    windows = {(t, l) for t in range(11) for l in range(31)}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(10):
            img = ds[0]["image"]
            assert any(torch.equal(img, to_tensor(arr[t:t + 10, l:l + 10])) or
                       torch.equal(img, to_tensor(arr[t:t + 10, l:l + 10]).flip(-1)) for t, l in windows)
    half = ImageFolder(tmp_path, 8, train=False, scale=0.5)[0]["image"]
    resized = np.asarray(Image.fromarray(arr).resize((20, 10), Image.Resampling.BICUBIC))
    assert torch.equal(half, to_tensor(resized[1:9, 6:14]))
    small = ImageFolder(tmp_path, 16, train=False, scale=0.25)[0]["image"]  # 5x10 is too small: scaled to 16x32
    assert small.shape == (3, 16, 16)
    with pytest.raises(DataError, match="scale must be a positive number"):
        ImageFolder(tmp_path, 8, scale=0.0)
    native = data_of(root=str(tmp_path), size=10, crop="native", val_root=str(tmp_path))
    folder = get_data_source("folder")
    assert folder.dataset(*native, channels=3, augment=True, seed=0).scale == 1.0
    assert torch.equal(folder.held_out(*native, channels=3, seed=0)[0]["image"], item["image"])
    assert folder.dataset(*data_of(root=str(tmp_path), size=10), channels=3, augment=True, seed=0).scale is None


def test_synthetic_world():
    item = SyntheticScenes(3, 24, seed=1, train=False, world="graded")[2]
    assert torch.equal(item["image"], to_tensor(render_scene(1_000_003 + 2, 24, world="graded").image))
    crop = SyntheticScenes(2, 32, seed=1, train=False, scene_size=(72, 128), world="graded")[0]
    plain = SyntheticScenes(2, 32, seed=1, train=False, scene_size=(72, 128))[0]
    np.testing.assert_array_equal(crop["paired"]["depth"], plain["paired"]["depth"])
    data = data_of(source="synthetic", size=8, n=2, world="graded")
    assert get_data_source("synthetic").dataset(*data, channels=3, augment=True, seed=0).world == "graded"
    with pytest.raises(DataError, match="world must be one of random, graded"):
        SyntheticScenes(2, 16, world="photo")
