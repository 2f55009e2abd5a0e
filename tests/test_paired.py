"""Paired folders: images/ beside one folder per condition, class sub-folders or labels.csv, crops shared."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.plugins import get_condition
from vqtoolkit.data import PairedFolder, crop_like
from vqtoolkit.data.recipe import WithCondition
from vqtoolkit.condition_spec import ConditionSpec
from vqtoolkit.errors import DataError
from vqtoolkit_plugins.synthetic.dataset import SyntheticScenes
from vqtoolkit_plugins.synthetic.render import NEAR_DEPTH, SKY_DEPTH, flip_pose, render_scene

from .plugins.conftest import cond


@pytest.fixture
def paired_root(tmp_path):
    """Two 40x30 images with depth, segmentation, pose and edge files, in class sub-folders."""
    root = tmp_path / "pairs"
    for k, cls in enumerate(["cats", "dogs"]):
        scene = render_scene(k, (30, 40))
        for folder in ("images", "depth", "segmentation", "pose", "edge"):
            (root / folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(root / "images" / cls / f"s{k}.png")
        np.save(root / "depth" / cls / f"s{k}.npy", scene.depth)
        Image.fromarray(scene.segmentation.astype(np.uint8), "L").save(root / "segmentation" / cls / f"s{k}.png")
        (root / "pose" / cls / f"s{k}.json").write_text(json.dumps({"keypoints": scene.pose.ravel().tolist()}))
        Image.fromarray(np.full((30, 40), 255 * (k % 2), np.uint8)).save(root / "edge" / cls / f"s{k}.png")
    return root


def test_paired_folder_items_and_class_folders(paired_root):
    data = PairedFolder(paired_root, 16, train=False)
    assert isinstance(data, PairedFolder) and len(data) == 2
    item = data[1]
    assert item["name"] == "dogs/s1" and item["image"].shape == (3, 16, 16)
    assert item["label"].item() == 1 and data[0]["label"].item() == 0
    assert sorted(item["paired"]) == ["depth", "edge", "pose", "segmentation"]
    assert item["crop"].tolist() == [30, 40, 16, 21, 0, 2, 0, 16]  # resized to 16x21, centre-cropped


def test_paired_conditions_are_cut_like_their_image(paired_root):
    data = PairedFolder(paired_root, 16, train=False)
    scene = render_scene(0, (30, 40))
    item = data[0]
    seg_c, seg_o = cond("segmentation")
    labels = crop_like(scene.segmentation, item["crop"], mode="nearest")
    assert torch.equal(seg_c.from_item(item, seg_o).argmax(0), torch.from_numpy(labels))
    depth_c, depth_o = cond("depth")
    assert depth_c.from_item(item, depth_o).shape == (1, 16, 16)
    pose_c, pose_o = cond("pose")
    limbs = pose_c.from_item(item, pose_o)
    assert limbs.shape == (3, 16, 16) and (limbs > -1).any()
    edge_c, edge_o = cond("edge")
    assert torch.allclose(edge_c.from_item(item, edge_o), -torch.ones(1, 16, 16))  # the file, not Canny
    assert torch.allclose(edge_c.from_item(data[1], edge_o), torch.ones(1, 16, 16))
    loader_item = WithCondition(data, ConditionSpec(*cond("class"), None))[1]
    assert loader_item["cond_raw"].tolist() == [1]


def test_depth_crops_are_normalised_by_their_whole_map(paired_root):
    """Native crops (paired or synthetic) read depth in the range of the whole map, as a sample's
    whole depth map is read: the same place gives the same value, whatever the crop."""
    c, o = cond("depth")
    data = PairedFolder(paired_root, 16, train=False, scale=1.0)
    item = data[0]
    assert item["crop"].tolist() == [30, 40, 30, 40, 7, 12, 0, 16]  # native: centre 16x16, no resize
    scene = render_scene(0, (30, 40))
    whole = c.read(str(paired_root / "depth" / "cats" / "s0.npy"), (30, 40), o)  # as `vqt sample --cond` reads it
    assert torch.allclose(c.from_item(item, o), whole[:, 7:23, 12:28])
    assert float(whole.min()) == -1 and float(c.from_item(item, o).min()) > -1  # not stretched to its own range
    crops = SyntheticScenes(4, 32, seed=1, train=False, scene_size=(72, 128))
    for k in range(4):
        it = crops[k]
        expected = (torch.from_numpy(it["paired"]["depth"]) - NEAR_DEPTH) / (SKY_DEPTH - NEAR_DEPTH) * 2 - 1
        assert torch.allclose(c.from_item(it, o)[0], expected)
    assert scene.depth.shape == (30, 40)


def test_inverse_depth_is_disparity_in_the_whole_maps_range(paired_root, tmp_path):
    """condition.inverse: 1/depth, normalised by the whole map's range as without it, so a ground
    plane's near rows (distance ~ 1/row) keep distinct values; near shows bright; depth <= 0 is refused."""
    c, _ = cond("depth")
    o = c.Options(inverse=True)
    crops = SyntheticScenes(4, 32, seed=1, train=False, scene_size=(72, 128))
    for k in range(4):
        it = crops[k]
        disparity = 1 / torch.from_numpy(it["paired"]["depth"])
        expected = (disparity - 1 / SKY_DEPTH) / (1 / NEAR_DEPTH - 1 / SKY_DEPTH) * 2 - 1
        assert torch.allclose(c.from_item(it, o)[0], expected, atol=1e-5)
    whole = c.read(str(paired_root / "depth" / "cats" / "s0.npy"), (30, 40), o)
    plain = c.read(str(paired_root / "depth" / "cats" / "s0.npy"), (30, 40), c.Options())
    assert torch.equal(whole.argmax(), plain.argmin())  # the nearest pixel is now the largest
    assert c.render(whole, o)[..., 0].flat[int(plain.argmin())] == 255  # and shows bright, as near does without it
    np.save(tmp_path / "zero.npy", np.zeros((30, 40), np.float32))
    with pytest.raises(DataError, match=r"zero.npy: condition.inverse = true needs depth > 0"):
        c.read(str(tmp_path / "zero.npy"), (30, 40), o)


def test_depth_slope_tells_an_objects_foot_from_the_ground_beside_it(tmp_path):
    """condition.slope: a second channel, rising on the ground and flat on the sky and on an upright
    box, including the box's foot, whose depth equals the ground's beside it."""
    H, W, horizon = 48, 64, 16
    rows = np.arange(H, dtype=np.float32)[:, None].repeat(W, 1)
    distance = np.where(rows < horizon, 8.0, 16.0 / np.maximum(rows - horizon + 1, 1)).astype(np.float32)
    foot = 40  # the box stands on row 40, at that row's distance, over rows 26..40
    distance[26:foot + 1, 20:36] = distance[foot, 0]
    np.save(tmp_path / "box.npy", distance)
    c, _ = cond("depth")
    o = c.Options(inverse=True, slope=True)
    assert c.stage_channels(o) == 2 and c.stage_channels(c.Options()) == 1
    raw = c.read(str(tmp_path / "box.npy"), (H, W), o)
    assert raw.shape == (2, H, W) and torch.equal(raw[:1], c.read(str(tmp_path / "box.npy"), (H, W), c.Options(inverse=True)))
    depth, slope = raw
    assert torch.allclose(depth[foot, 28], depth[foot, 5])  # depth alone cannot tell them apart
    assert slope[foot - 1, 28].abs() < 1e-6 < 0.3 < slope[foot - 1, 5]  # the slope can
    assert slope[2:horizon - 2].abs().max() < 1e-6 and slope[horizon + 2:, :10].min() > 0.3
    assert c.render(raw, o).shape == (H, W, 3)
    item = SyntheticScenes(1, 32, seed=1, train=False, scene_size=(72, 128))[0]
    assert c.from_item(item, o).shape == (2, 32, 32)


def test_paired_pose_follows_crop_and_flip(paired_root):
    """Keypoints drawn through the item's crop equal a cut of the full-size drawing; a flipped crop
    equals a cut of the flipped scene's (left and right swapped, as the synthetic scenes do)."""
    from vqtoolkit_plugins.pose import render_limbs

    scene = render_scene(0, (30, 40))
    c, o = cond("pose")
    item = {"image": torch.zeros(3, 30, 30), "name": "x", "paired": {"pose": str(
        paired_root / "pose" / "cats" / "s0.json")}, "crop": torch.tensor([30, 40, 30, 40, 0, 6, 0, 30])}
    assert torch.equal(c.from_item(item, o), render_limbs([scene.pose], 30, 40)[:, :, 6:36])
    item["crop"] = torch.tensor([30, 40, 30, 40, 0, 6, 1, 30])
    mirrored = render_limbs([flip_pose(scene.pose, 40)], 30, 40)[:, :, 4:34]  # 40 - 6 - 30 = 4
    assert torch.equal(c.from_item(item, o), mirrored)


def test_paired_folder_labels_csv(paired_root):
    (paired_root / "labels.csv").write_text("name,label\ncats/s0,4\ndogs/s1,2\n")
    data = PairedFolder(paired_root, 16, train=False)
    assert [data[i]["label"].item() for i in range(2)] == [4, 2]


def _no_change(root):
    pass


@pytest.mark.parametrize("breaks, folder, message", [
    pytest.param(lambda root: (root / "labels.csv").write_text("name,label\ncats/s0,4\n"), "",
                 r"labels.csv has no label for 1 images \(first: dogs/s1\)", id="labels-csv-incomplete"),
    pytest.param(lambda root: (root / "labels.csv").write_text("name,label\ncats/s0,x\ndogs/s1,2\n"), "",
                 r"labels.csv line 2: label 'x' is not an integer", id="labels-csv-not-an-integer"),
    pytest.param(lambda root: (root / "depth" / "dogs" / "s1.npy").unlink(), "",
                 r"depth lacks the files of 1 of 2 images \(first: dogs/s1\)", id="condition-file-missing"),
    pytest.param(lambda root: (root / "depth" / "dogs" / "s1.txt").write_text("a second s1"), "",
                 r"several files for image 'dogs/s1': s1.npy, s1.txt", id="condition-file-twice"),
    pytest.param(_no_change, "depth", "has no images/ folder", id="no-images-folder"),
])
def test_paired_folder_errors(paired_root, breaks, folder, message):
    breaks(paired_root)
    with pytest.raises(DataError, match=message):
        PairedFolder(paired_root / folder, 16)


def test_paired_condition_file_must_match_its_image(paired_root):
    np.save(paired_root / "depth" / "dogs" / "s1.npy", np.zeros((5, 5)))
    item = PairedFolder(paired_root, 16, train=False)[1]
    with pytest.raises(DataError, match=r"depth file .*s1.npy is 5x5 but its image is 40x30"):
        get_condition("depth").from_item(item, cond("depth")[1])


def test_paired_folder_without_classes_has_no_label(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    item = PairedFolder(tmp_path, 16)[0]
    assert "label" not in item and item["paired"] == {}
    c, o = cond("depth")
    with pytest.raises(DataError, match=r"item 'a' has no depth: .*a depth/ folder with data.source = \"paired\""):
        c.from_item(item, o)
