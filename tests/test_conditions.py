"""The built-in modalities one by one: raw conditions, files, pictures, tokens, every error; paired folders."""

from __future__ import annotations

import json
import tomllib
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.plugins import get_condition
from vqtoolkit.data import PairedFolder, SyntheticScenes, WithCondition, build_dataset, crop_like
from vqtoolkit.errors import DataError, ImageError, RecipeError, VqtError
from vqtoolkit.stage2 import ConditionSpec
from vqtoolkit.recipes import DataConfig, Recipe, load_recipe, recipe_from_dict
from vqtoolkit.synthetic import COCO_SKELETON, N_CLASSES, N_LABELS, flip_pose, render_scene
from vqtoolkit.train.stage2 import build_gpt


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


# --------------------------------------------------------------------------------------------
# segmentation


def test_segmentation_from_item_is_one_hot_of_labels(item):
    c, o = cond("segmentation")
    raw = c.from_item(item, o)
    assert raw.shape == (N_LABELS, 32, 32) and raw.dtype == torch.float32
    assert torch.equal(raw.sum(0), torch.ones(32, 32))
    assert torch.equal(raw.argmax(0), item["segmentation"])
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


def test_segmentation_errors(tmp_path, item):
    c, o = cond("segmentation", n_labels=4)
    path = save_grey(tmp_path / "labels.png", np.full((3, 4), 7))
    with pytest.raises(VqtError, match=r"labels.png holds label 7, but condition.n_labels = 4"):
        c.read(path, (3, 4), o)
    with pytest.raises(ImageError, match=r"labels.png is 4x3 but --size is 8x6"):
        c.read(path, (6, 8), o)
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageError, match="is a RGB image; expected palette or greyscale"):
        c.read(str(tmp_path / "rgb.png"), (3, 4), o)
    with pytest.raises(ImageError, match="does not exist"):
        c.read(str(tmp_path / "missing.png"), (3, 4), o)
    with pytest.raises(VqtError, match=r"synthetic/000001.*holds label 5, but condition.n_labels = 4"):
        c.from_item(item, o)
    with pytest.raises(RecipeError, match=r"condition.n_labels = 1 is invalid"):
        cond("segmentation", n_labels=1)
    with pytest.raises(RecipeError, match=r"unknown key 'condition.n_label'; did you mean 'n_labels'"):
        cond("segmentation", n_label=3)
    with pytest.raises(DataError, match=r"item 'x' has no segmentation"):
        c.from_item({"name": "x", "image": torch.zeros(3, 4, 4)}, o)


def test_segmentation_render_is_palette_of_argmax():
    c, o = cond("segmentation", n_labels=3)
    logits = torch.tensor([[[5.0, 0.0]], [[0.0, 0.0]], [[1.0, 9.0]]])  # (3, 1, 2): labels 0 and 2
    picture = c.render(logits, o)
    assert picture.shape == (1, 2, 3) and picture.dtype == np.uint8
    assert picture[0, 0].tolist() == [0, 0, 0] and picture[0, 1].tolist() == [0, 128, 0]  # VOC colours
    with pytest.raises(VqtError, match=r"expects raw maps of 3 channel\(s\).*got shape \(2, 1, 2\)"):
        c.render(logits[:2], o)


# --------------------------------------------------------------------------------------------
# depth


def test_depth_is_min_max_normalised(item):
    c, o = cond("depth")
    raw = c.from_item(item, o)
    d = item["depth"]
    assert raw.shape == (1, 32, 32) and c.stage_channels(o) == 1
    assert torch.allclose(raw[0], (d - d.min()) / (d.max() - d.min()) * 2 - 1)
    assert float(raw.min()) == -1 and float(raw.max()) == 1
    constant = c.from_item({"depth": torch.full((4, 5), 3.0)}, o)
    assert torch.equal(constant, torch.zeros(1, 4, 5))


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


def test_depth_errors_and_render(tmp_path):
    c, o = cond("depth")
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 3)))
    with pytest.raises(ImageError, match=r"rgb.npy has shape \(3, 4, 3\); expected a single channel"):
        c.read(str(tmp_path / "rgb.npy"), (3, 4), o)
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan))
    with pytest.raises(ImageError, match="non-finite"):
        c.read(str(tmp_path / "nan.npy"), (3, 4), o)
    picture = c.render(torch.tensor([[[-1.0, 1.0]]]), o)
    assert picture.tolist() == [[[255, 255, 255], [0, 0, 0]]]  # near (small) is bright
    with pytest.raises(VqtError, match="expects raw maps of 1 channel"):
        c.render(torch.zeros(3, 2, 2), o)


# --------------------------------------------------------------------------------------------
# edge


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


# --------------------------------------------------------------------------------------------
# pose


def test_pose_limb_map_draws_labelled_limbs_only():
    from vqtoolkit_plugins.pose import LIMB_COLOURS, render_limbs

    kp = np.zeros((17, 3), np.float32)
    kp[5] = (10, 20, 2)  # left shoulder
    kp[7] = (30, 20, 1)  # left elbow (occluded still counts)
    kp[9] = (30, 40, 0)  # left wrist unlabelled: the forearm is not drawn
    raw = render_limbs([kp], 64, 64)
    assert raw.shape == (3, 64, 64) and float(raw.min()) == -1
    limb = COCO_SKELETON.index((5, 7))
    assert torch.allclose(raw[:, 20, 20], torch.from_numpy(LIMB_COLOURS[limb]) * 2 - 1)
    assert torch.equal(raw[:, 35, 30], -torch.ones(3))  # no forearm
    assert torch.equal(raw[:, 5, 5], -torch.ones(3))


def test_pose_from_item_and_json_forms(tmp_path, item):
    c, o = cond("pose")
    raw = c.from_item(item, o)
    assert raw.shape == (3, 32, 32) and c.stage_channels(o) == 3
    assert (raw > -1).any() and float(raw.max()) <= 1
    kp = item["pose"].numpy()
    forms = {
        "flat": kp.ravel().tolist(),
        "triples": kp.tolist(),
        "dict": {"keypoints": kp.ravel().tolist()},
        "annotations": {"annotations": [{"keypoints": kp.tolist()}]},
        "scaled": {"keypoints": (kp * [0.5, 0.5, 1]).ravel().tolist(), "width": 16, "height": 16},
    }
    for name, data in forms.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert torch.allclose(c.read(str(tmp_path / f"{name}.json"), (32, 32), o), raw), name
    assert np.array_equal(c.render(raw, o), ((raw.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    Image.fromarray(c.render(raw, o)).save(tmp_path / "limbs.png")
    assert torch.allclose(c.read(str(tmp_path / "limbs.png"), (32, 32), o), raw, atol=1 / 127)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2, 3]", r"expected 17 COCO keypoints as \[x, y, v\] \(51 numbers\), got 3 numbers"),
    (json.dumps([[1, 2]] * 17), r"keypoint triples must be \[x, y, v\]; got \[1, 2\]"),
    (json.dumps(["a"] * 51), "keypoints must be finite numbers"),
    (json.dumps({"people": []}), r"needs \"keypoints\" or \"annotations\""),
    (json.dumps({"keypoints": [0] * 51, "width": 0, "height": 4}), r"\"width\" and \"height\" must both be positive"),
    (json.dumps("text"), "keypoints must be a list, got str"),
])
def test_pose_json_errors(tmp_path, text, message):
    c, o = cond("pose")
    path = tmp_path / "pose.json"
    path.write_text(text)
    with pytest.raises(ImageError, match=rf"pose file .*pose.json: .*{message}|pose file .*pose.json {message}"):
        c.read(str(path), (8, 8), o)


def test_pose_file_errors(tmp_path):
    c, o = cond("pose")
    with pytest.raises(DataError, match=r"item 'x' has no pose"):
        c.from_item({"name": "x", "image": torch.zeros(3, 8, 8)}, o)
    with pytest.raises(VqtError, match="expects raw maps of 3 channel"):
        c.render(torch.zeros(1, 8, 8), o)
    with pytest.raises(ImageError, match=r"pose file .*none.json does not exist"):
        c.read(str(tmp_path / "none.json"), (8, 8), o)
    Image.new("RGB", (8, 6)).save(tmp_path / "limbs.png")
    with pytest.raises(ImageError, match=r"pose map .*limbs.png is 8x6 but --size is 8x8"):
        c.read(str(tmp_path / "limbs.png"), (8, 8), o)


# --------------------------------------------------------------------------------------------
# superres


def test_superres_degrades_and_reads_small_images(tmp_path, item):
    c, o = cond("superres")
    raw = c.from_item(item, o)
    assert raw.shape == (3, 32, 32) and float(raw.abs().max()) <= 1 and c.stage_channels(o) == 3
    flat = c.from_item({"image": torch.full((3, 32, 32), 0.25)}, o)
    assert torch.allclose(flat, torch.full((3, 32, 32), 0.25), atol=1e-5)
    assert (raw - item["image"]).abs().mean() > 0.01  # the detail is gone
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "small.png")
    up = c.read(str(tmp_path / "small.png"), (48, 64), o)
    assert up.shape == (3, 48, 64) and torch.allclose(up[0], torch.ones(48, 64), atol=1e-5)
    with pytest.raises(ImageError, match=r"small.png is 8x6, larger than --size 4x4; give the small image"):
        c.read(str(tmp_path / "small.png"), (4, 4), o)
    (tmp_path / "cut.png").write_bytes((tmp_path / "small.png").read_bytes()[:40])
    with pytest.raises(ImageError, match=r"cut.png is (truncated|not an image file)"):
        c.read(str(tmp_path / "cut.png"), (48, 64), o)
    with pytest.raises(RecipeError, match=r"condition.factor = 1 is invalid"):
        cond("superres", factor=1)
    with pytest.raises(VqtError, match="expects raw maps of 3 channel"):
        c.from_item({"image": torch.zeros(1, 32, 32)}, o)


# --------------------------------------------------------------------------------------------
# class


def test_class_tokens_vocab_and_reading(item):
    c, o = cond("class")
    assert (c.kind, c.has_stage) == ("global", False)
    raw = c.from_item(item, o)
    assert raw.dtype == torch.int64 and raw.tolist() == [int(item["label"])]
    assert c.read("2", (32, 32), o).tolist() == [2]
    assert c.tokens(torch.tensor([[0], [2], [3]]), o, None).tolist() == [[0], [2], [3]]  # 3: the null token
    assert c.vocab_size(o, None) == N_CLASSES + 1
    assert c.null_tokens(o).tolist() == [N_CLASSES]
    picture = c.render(raw, o)
    assert picture.shape == (16, 64, 3) and (picture < 128).any()
    assert not np.array_equal(c.render(c.null_tokens(o), o), picture)  # "no class"


def test_class_label_dropout_uses_the_generator():
    c, o = cond("class", n_classes=10, label_dropout=0.25)
    labels = torch.randint(0, 10, (4000, 1), generator=torch.Generator().manual_seed(1))
    a = c.train_tokens(labels, o, torch.Generator().manual_seed(7))
    b = c.train_tokens(labels, o, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    dropped = a == 10
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(a[~dropped], labels[~dropped])
    c0, o0 = cond("class", label_dropout=0.0)
    assert torch.equal(c0.train_tokens(labels % 3, o0, torch.Generator()), labels % 3)


def test_class_errors():
    c, o = cond("class")
    with pytest.raises(VqtError, match=r"'cat' is not a class number; pass --class N with N in 0..2"):
        c.read("cat", (8, 8), o)
    with pytest.raises(VqtError, match=r"class 3 is out of range: this model knows classes 0..2"):
        c.read("3", (8, 8), o)
    with pytest.raises(VqtError, match=r"class labels -1..1 are outside 0..3"):
        c.tokens(torch.tensor([[-1], [1]]), o, None)
    with pytest.raises(VqtError, match=r"integer labels of shape \(B, 1\)"):
        c.tokens(torch.zeros(2, 1), o, None)
    with pytest.raises(DataError, match=r"item 'a/b' has no class label: .*labels.csv"):
        c.from_item({"name": "a/b"}, o)
    with pytest.raises(DataError, match=r"item 'a/b' has class 5, outside 0..2"):
        c.from_item({"name": "a/b", "label": torch.tensor(5)}, o)
    with pytest.raises(RecipeError, match=r"condition.label_dropout = 1.0 is invalid"):
        cond("class", label_dropout=1.0)
    with pytest.raises(RecipeError, match=r"condition.n_classes = 0 is invalid"):
        cond("class", n_classes=0)


# --------------------------------------------------------------------------------------------
# coordinates


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


def test_coordinates_errors():
    c, o = cond("coordinates", n_codes=16, down_factor=8)
    with pytest.raises(VqtError, match=r"pass --cond full .*not 'map.npy'"):
        c.read("map.npy", (16, 16), o)
    with pytest.raises(VqtError, match=r"12x16 are not whole 8x8 cells \(condition.down_factor = 8\)"):
        c.tokens(torch.zeros(1, 1, 16, 12), o, None)
    with pytest.raises(VqtError, match=r"must lie in \[0, 1\]"):
        c.tokens(torch.full((1, 1, 8, 8), 2.0), o, None)
    with pytest.raises(VqtError, match="expects raw maps of 1 channel"):
        c.tokens(torch.zeros(1, 2, 8, 8), o, None)
    with pytest.raises(RecipeError, match="condition.down_factor = 0 is invalid"):
        cond("coordinates", down_factor=0)


# --------------------------------------------------------------------------------------------
# paired folders


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
    data = build_dataset("paired", paired_root, 16, train=False)
    assert isinstance(data, PairedFolder) and len(data) == 2
    item = data[1]
    assert item["name"] == "dogs/s1" and item["image"].shape == (3, 16, 16)
    assert item["label"].item() == 1 and data[0]["label"].item() == 0
    assert sorted(item["paired"]) == ["depth", "edge", "pose", "segmentation"]
    assert item["crop"].tolist() == [30, 40, 16, 21, 0, 2, 0]  # resized to 16x21, centre-cropped


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
    loader_item = WithCondition(data, *cond("class"))[1]
    assert loader_item["cond_raw"].tolist() == [1]


def test_paired_pose_follows_crop_and_flip(paired_root):
    """Keypoints drawn through the item's crop equal a cut of the full-size drawing; a flipped crop
    equals a cut of the flipped scene's (left and right swapped, as the synthetic scenes do)."""
    from vqtoolkit_plugins.pose import render_limbs

    scene = render_scene(0, (30, 40))
    c, o = cond("pose")
    item = {"image": torch.zeros(3, 30, 30), "name": "x", "paired": {"pose": str(
        paired_root / "pose" / "cats" / "s0.json")}, "crop": torch.tensor([30, 40, 30, 40, 0, 6, 0])}
    assert torch.equal(c.from_item(item, o), render_limbs([scene.pose], 30, 40)[:, :, 6:36])
    item["crop"] = torch.tensor([30, 40, 30, 40, 0, 6, 1])
    mirrored = render_limbs([flip_pose(scene.pose, 40)], 30, 40)[:, :, 4:34]  # 40 - 6 - 30 = 4
    assert torch.equal(c.from_item(item, o), mirrored)


def test_paired_folder_labels_csv_and_errors(paired_root):
    (paired_root / "labels.csv").write_text("name,label\ncats/s0,4\ndogs/s1,2\n")
    data = PairedFolder(paired_root, 16, train=False)
    assert [data[i]["label"].item() for i in range(2)] == [4, 2]
    (paired_root / "labels.csv").write_text("name,label\ncats/s0,4\n")
    with pytest.raises(DataError, match=r"labels.csv has no label for 1 images \(first: dogs/s1\)"):
        PairedFolder(paired_root, 16)
    (paired_root / "labels.csv").write_text("name,label\ncats/s0,x\ndogs/s1,2\n")
    with pytest.raises(DataError, match=r"labels.csv line 2: label 'x' is not an integer"):
        PairedFolder(paired_root, 16)
    (paired_root / "labels.csv").unlink()
    (paired_root / "depth" / "dogs" / "s1.npy").unlink()
    with pytest.raises(DataError, match=r"depth lacks the files of 1 of 2 images \(first: dogs/s1\)"):
        PairedFolder(paired_root, 16)
    np.save(paired_root / "depth" / "dogs" / "s1.npy", np.zeros((5, 5)))
    (paired_root / "depth" / "dogs" / "s1.txt").write_text("a second s1")
    with pytest.raises(DataError, match=r"several files for image 'dogs/s1': s1.npy, s1.txt"):
        PairedFolder(paired_root, 16)
    (paired_root / "depth" / "dogs" / "s1.txt").unlink()
    item = PairedFolder(paired_root, 16, train=False)[1]
    with pytest.raises(DataError, match=r"depth file .*s1.npy is 5x5 but its image is 40x30"):
        get_condition("depth").from_item(item, None)
    with pytest.raises(DataError, match="has no images/ folder"):
        PairedFolder(paired_root / "depth", 16)


def test_paired_folder_without_classes_has_no_label(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    item = PairedFolder(tmp_path, 16)[0]
    assert "label" not in item and item["paired"] == {}
    c, o = cond("depth")
    with pytest.raises(DataError, match=r"item 'a' has no depth: .*a depth/ folder with data.source = \"paired\""):
        c.from_item(item, o)


# --------------------------------------------------------------------------------------------
# recipes


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODALITY_RECIPES = sorted(p.stem for p in RECIPES.glob("*.toml")
                          if p.stem not in ("quickstart", "quickstart-stage2", "ffhq", "imagenet"))
PAIRED_SOURCE = "paired" in typing.get_args(typing.get_type_hints(DataConfig)["source"])


def _sections(stem: str, keep: tuple[str, ...]) -> Recipe:
    """Some sections of a recipe (enough to build models; skips [data], whatever its source)."""
    tables = tomllib.loads((RECIPES / f"{stem}.toml").read_text())
    return recipe_from_dict({k: v for k, v in tables.items() if k in keep}, stem)


def _stem(run_path: str) -> str:
    """runs/<stem>/last.safetensors -> <stem>: the recipe that trains it (by the default run folder)."""
    parts = Path(run_path).parts
    assert parts[0] == "runs" and parts[-1] == "last.safetensors", run_path
    return parts[1]


@pytest.mark.parametrize("stem", MODALITY_RECIPES)
def test_modality_recipe_is_consistent(stem):
    tables = tomllib.loads((RECIPES / f"{stem}.toml").read_text())
    if tables["data"]["source"] == "paired" and not PAIRED_SOURCE:
        pytest.skip("core: DataConfig.source does not accept 'paired' yet")
    recipe = load_recipe(RECIPES / f"{stem}.toml")
    condition = get_condition(recipe.condition.name)
    options = condition.parse_options(recipe.condition.options, stem)
    if stem.endswith("-stage"):  # a condition VQGAN: reads and writes the raw condition's channels
        channels = condition.stage_channels(options)
        assert recipe.model.in_channels == recipe.model.out_channels == recipe.loss.disc_in_channels == channels
        assert (recipe.loss.pixel_loss == "bce") == (condition.name == "segmentation")
        return
    first = _sections(_stem(recipe.transformer.first_stage), ("model",)) if (
        RECIPES / f"{_stem(recipe.transformer.first_stage)}.toml").exists() else None
    if condition.name == "coordinates" and first is not None:
        assert options.down_factor == first.model.factor
    if condition.has_stage:
        stage_stem = _stem(recipe.condition.stage)
        if stage_stem == _stem(recipe.transformer.first_stage):  # encoded by the image VQGAN itself
            assert condition.stage_channels(options) == 3
            return
        stage = _sections(stage_stem, ("model", "condition"))
        assert stage.condition.name == condition.name and stage.condition.options == recipe.condition.options
        if first is not None:
            assert stage.model.factor == first.model.factor  # the grids must match
    else:
        assert not recipe.condition.stage


def _drin_gpt() -> torch.nn.Module:
    """drin-depth's GPT built on the meta device by train-stage2's own `build_gpt`."""
    recipe = _sections("drin-depth", ("transformer", "condition"))
    first_recipe, stage_recipe = _sections("imagenet", ("model", "quantizer")), _sections(
        "drin-depth-stage", ("model", "quantizer", "condition"))
    with torch.device("meta"):
        first = Stage1Model.build(first_recipe.model, first_recipe.quantizer)
        stage = Stage1Model.build(stage_recipe.model, stage_recipe.quantizer)
        condition = get_condition("depth")
        spec = ConditionSpec(condition, condition.parse_options({}, "drin-depth"), {}, stage)
        return build_gpt(recipe, first, spec)


def test_drin_depth_builds_the_papers_transformer():
    gpt = _drin_gpt()
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd, gpt.vocab_size) == (24, 16, 1024, 1024)
    without_positions = sum(p.numel() for name, p in gpt.named_parameters() if name != "pos_emb")
    assert without_positions == 304_408_576


def test_drin_depth_transformer_has_the_papers_parameter_count():
    gpt = _drin_gpt()
    assert gpt.block_size == 512
    assert sum(p.numel() for p in gpt.parameters()) == 304_932_864
