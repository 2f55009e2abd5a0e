"""The paper's data as taming-transformers publishes it: packed depth, dataset label conventions, and
parallel trees with list files; fixtures are written here as the reference writes them (taming_files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.data import PairedFolder
from vqtoolkit.errors import DataError, ImageError, RecipeError, VqtError
from vqtoolkit.recipes import load_recipe
from vqtoolkit_plugins.depth import normalise
from vqtoolkit_plugins.depth_files import read_depth
from vqtoolkit_plugins.synthetic.render import render_scene

from .plugins.conftest import cond
from .taming_files import (ade20k_tree, coco_tree, decode_by_hand, drin_tree, midas_like, save_label_map,
                           save_photo, save_taming_depth)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# ---- depth -----------------------------------------------------------------------------------------


def test_packed_depth_decodes_to_the_stored_floats(tmp_path):
    depth = midas_like(0, (24, 32))
    path = save_taming_depth(tmp_path / "x.png", depth)
    assert Image.open(path).mode == "RGBA"
    assert np.array_equal(decode_by_hand(path), depth)
    for encoding in ("auto", "taming-rgba"):
        assert np.array_equal(read_depth(str(path), encoding), depth)
    c, o = cond("depth")
    expected = (depth - depth.min()) / (depth.max() - depth.min()) * 2 - 1
    torch.testing.assert_close(c.read(str(path), (24, 32), o)[0], torch.from_numpy(expected))


def test_plain_files_keep_working_and_encodings_refuse_the_other_kind(tmp_path):
    values = (np.arange(12).reshape(3, 4) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "d.tiff")
    np.save(tmp_path / "d.npy", values.astype(np.float64))
    packed = save_taming_depth(tmp_path / "packed.png", midas_like(1, (8, 8)))
    for name in ("d16.png", "d.tiff", "d.npy"):
        for encoding in ("auto", "plain"):
            assert np.array_equal(read_depth(str(tmp_path / name), encoding), values.astype(np.float32))
        with pytest.raises(ImageError, match=rf'{name} is not an 8-bit RGBA PNG, but condition.encoding = '
                                             r'"taming-rgba".*set condition.encoding = "auto" or "plain"'):
            read_depth(str(tmp_path / name), "taming-rgba")
    with pytest.raises(ImageError, match=r'packed.png is an RGBA image, but condition.encoding = "plain".*'
                                         r'set condition.encoding = "auto" or "taming-rgba"'):
        read_depth(str(packed), "plain")


def rgba_photo(alpha: np.ndarray) -> np.ndarray:
    """A smooth RGBA picture (gradients with a little texture, as photographs have) with this alpha."""
    h, w = alpha.shape
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([40 + 3 * x + (y % 2), 90 + 2 * y, 200 - 2 * x], axis=-1)
    return np.concatenate([np.clip(rgb, 0, 255), alpha[:, :, None]], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("alpha, message", [
    pytest.param(np.full((24, 32), 255), r"is an RGBA picture, not depth.*decode to NaN or infinity", id="opaque"),
    pytest.param(np.pad(np.full((12, 16), 255), ((6, 6), (8, 8))), r"is an RGBA picture, not depth",
                 id="transparent-background"),
    pytest.param(np.full((24, 32), 128), r"is an RGBA picture, not depth.*magnitudes from", id="half-transparent"),
    pytest.param(np.full((24, 32), 64), r'cannot tell whether depth map .* set condition.encoding = "taming-rgba"',
                 id="uniform-alpha-64-decodes-plausibly"),
])
def test_an_ordinary_rgba_picture_is_never_taken_for_depth(tmp_path, alpha, message):
    Image.fromarray(rgba_photo(alpha.astype(np.uint8))).save(tmp_path / "photo.png")
    c, o = cond("depth")
    with pytest.raises(ImageError, match=message):
        c.read(str(tmp_path / "photo.png"), (24, 32), o)


def test_unclear_packed_maps_name_the_option_and_taming_rgba_reads_them(tmp_path):
    constant = save_taming_depth(tmp_path / "flat.png", np.full((4, 4), 3.5, np.float32))
    negative = save_taming_depth(tmp_path / "neg.png", -midas_like(2, (8, 8)))
    for path, why in ((constant, "it decodes to the constant 3.5"), (negative, "it decodes to no positive value")):
        with pytest.raises(ImageError, match=rf'cannot tell .*: {why}; set condition.encoding = "taming-rgba"'):
            read_depth(str(path), "auto")
    assert np.array_equal(read_depth(str(negative), "taming-rgba"), -midas_like(2, (8, 8)))
    with pytest.raises(ImageError, match=r'not taming.s packed float32 depth: .*NaN.*"taming-rgba"'):
        read_depth(str(save_taming_depth(tmp_path / "nan.png", np.full((4, 4), np.nan, np.float32))), "taming-rgba")
    with pytest.raises(RecipeError, match=r"condition.encoding = 'rgba' is invalid: expected one of 'auto', "
                                          r"'taming-rgba', 'plain'"):
        cond("depth", encoding="rgba")


# ---- segmentation ------------------------------------------------------------------------------------

COCO = {"n_labels": 183, "label_shift": 1, "unlabeled": 255, "unlabeled_label": 0}


def test_coco_labels_read_as_the_reference_shifts_them(tmp_path):
    stored = np.array([[255, 0, 1], [181, 7, 255]])
    path = save_label_map(tmp_path / "coco.png", stored)
    c, o = cond("segmentation", **COCO)
    raw = c.read(str(path), (2, 3), o)
    reference = np.eye(183)[(stored.astype(np.uint8) + np.uint8(1))]  # uint8 + 1: 255 wraps to 0
    assert raw.shape == (183, 2, 3) and torch.equal(raw, torch.from_numpy(reference).permute(2, 0, 1).float())
    left_out = cond("segmentation", n_labels=183, label_shift=1, unlabeled=255)
    raw = left_out[0].read(str(path), (2, 3), left_out[1])
    assert raw[:, 0, 0].sum() == 0 and raw[:, 1, 2].sum() == 0 and raw[2, 0, 2] == 1  # 255: no label; 1 -> 2


@pytest.mark.parametrize("options, stored, message", [
    pytest.param({"n_labels": 182}, [[255, 0], [181, 3]],
                 r"coco.png holds label 255, but condition.n_labels = 182 \(labels 0..181\); if 255 marks unlabeled "
                 r"pixels \(COCO-Stuff\), set condition.unlabeled = 255", id="255-without-unlabeled"),
    pytest.param({"n_labels": 182, "label_shift": 1, "unlabeled": 255}, [[255, 0], [181, 3]],
                 r"coco.png holds value 181 \(label 182 after condition.label_shift = 1\), but condition.n_labels "
                 r"= 182", id="shift-needs-one-more-label"),
    pytest.param({"n_labels": 182, "label_shift": -1}, [[0, 1], [5, 3]],
                 r"holds value 0 \(label -1 after condition.label_shift = -1\)", id="negative-shift"),
])
def test_labels_outside_the_options_name_file_value_and_option(tmp_path, options, stored, message):
    path = save_label_map(tmp_path / "coco.png", np.array(stored))
    c, o = cond("segmentation", **options)
    with pytest.raises(VqtError, match=message):
        c.read(str(path), (2, 2), o)


@pytest.mark.parametrize("options, message", [
    pytest.param({"unlabeled_label": 0}, r"condition.unlabeled_label = 0 needs condition.unlabeled",
                 id="label-without-value"),
    pytest.param({"n_labels": 4, "unlabeled": 255, "unlabeled_label": 4},
                 r"condition.unlabeled_label = 4 is invalid: expected a label 0..3", id="label-out-of-range"),
    pytest.param({"unlabeled": -2}, r"condition.unlabeled = -2 is invalid", id="negative-unlabeled"),
    pytest.param({"label_shift": 1.5}, r"condition.label_shift = 1.5 has the wrong type", id="shift-not-int"),
])
def test_segmentation_option_errors(options, message):
    with pytest.raises(RecipeError, match=message):
        cond("segmentation", **options)


def test_ade20k_labels_are_0_to_150(tmp_path):
    ade20k_tree(tmp_path)
    data = PairedFolder(None, 16, images=tmp_path / "ade20k_root" / "images",
                        paired={"segmentation": tmp_path / "ade20k_root" / "annotations"}, train=False)
    c, o = cond("segmentation", n_labels=151)
    assert c.from_item(data[0], o).shape == (151, 16, 16)
    too_few = cond("segmentation", n_labels=150)
    with pytest.raises(VqtError, match=r"label map .*ADE_train_00000001.png holds label 150, but condition.n_labels"):
        too_few[0].from_item(data[0], too_few[1])


# ---- parallel trees ----------------------------------------------------------------------------------


def test_parallel_trees_pair_by_relative_path_without_extension(tmp_path):
    names = drin_tree(tmp_path)
    data = PairedFolder(None, 16, images=tmp_path / "drin_images", paired={"depth": tmp_path / "drin_depth"},
                        train=False)
    assert data.names == names and [data[i]["label"].item() for i in range(3)] == [0, 0, 1]
    item = data[2]
    assert item["paired"]["depth"] == str(tmp_path / "drin_depth" / f"{names[2]}.png")
    c, o = cond("depth")
    whole = c.read(item["paired"]["depth"], (24, 32), o)
    depth = decode_by_hand(tmp_path / "drin_depth" / f"{names[2]}.png")
    torch.testing.assert_close(whole, normalise(torch.from_numpy(depth.copy())))
    assert c.from_item(item, o).shape == (1, 16, 16)


def test_list_files_pick_images_under_the_image_tree(tmp_path):
    names = drin_tree(tmp_path)
    data = PairedFolder(None, 16, images=tmp_path / "drin_images", paired={"depth": tmp_path / "drin_depth"},
                        list_file=tmp_path / "drin_examples.txt")
    assert data.names == names[:2]
    (tmp_path / "drin_examples.txt").write_text("n01443537/ILSVRC2012_val_00000001.JPEG\nn09/gone.JPEG\nn09/x.JPEG\n")
    with pytest.raises(DataError, match=r"drin_examples.txt: 2 of 3 listed images do not exist under .*drin_images "
                                        r"\(first: n09/gone.JPEG, n09/x.JPEG\)"):
        PairedFolder(None, 16, images=tmp_path / "drin_images", list_file=tmp_path / "drin_examples.txt")


def test_missing_partners_are_counted(tmp_path):
    names = coco_tree(tmp_path)
    for name in names[1:]:
        (tmp_path / "cocostuffthings" / "train2017" / f"{name}.png").unlink()
    with pytest.raises(DataError, match=r"cocostuffthings/train2017 lacks the files of 2 of 3 images \(first: "
                                        r"000000000025, 000000000030\)"):
        PairedFolder(None, 16, images=tmp_path / "coco" / "train2017",
                     paired={"segmentation": tmp_path / "cocostuffthings" / "train2017"})
    with pytest.raises(DataError, match=r"data.paired.segmentation = '.*nowhere' is not a folder"):
        PairedFolder(None, 16, images=tmp_path / "coco" / "train2017", paired={"segmentation": tmp_path / "nowhere"})
    with pytest.raises(DataError, match=r"image tree .*nowhere \(data.images\) is not a folder"):
        PairedFolder(None, 16, images=tmp_path / "nowhere")


def test_root_layout_takes_extra_trees(tmp_path):
    root = tmp_path / "pairs"
    save_label_map(root / "segmentation" / "a.png", np.zeros((8, 8)))
    save_photo(root / "images" / "a.jpg", render_scene(0, (8, 8)).image)
    save_taming_depth(tmp_path / "elsewhere" / "a.png", midas_like(0, (8, 8)))
    data = PairedFolder(root, 8, paired={"depth": tmp_path / "elsewhere"})
    assert sorted(data[0]["paired"]) == ["depth", "segmentation"]


def test_recipes_name_the_trees_and_set_reaches_into_data_paired(tmp_path):
    recipe = load_recipe(RECIPES / "drin-depth-stage.toml", ["data.images=/d/img", "data.paired.depth=/d/depth"])
    assert (recipe.data.options.images, recipe.data.options.paired) == ("/d/img", {"depth": "/d/depth"})
    default = load_recipe(RECIPES / "drin-depth-stage.toml")
    assert (default.data.options.images, default.data.options.paired) == ("data/drin_images",
                                                                          {"depth": "data/drin_depth"})
    with pytest.raises(RecipeError, match=r"data.images is a key of data source paired, not of 'synthetic'"):
        load_recipe(RECIPES / "quickstart.toml", ["data.images=x"])
    with pytest.raises(RecipeError, match=r"data.paired.depth = 3 has the wrong type: expected a string"):
        load_recipe(RECIPES / "drin-depth-stage.toml", ["data.paired.depth=3"])
    with pytest.raises(RecipeError, match=r"'data.size' is not a table"):
        load_recipe(RECIPES / "drin-depth-stage.toml", ["data.size.x=3"])


def test_held_out_parallel_trees(tmp_path):
    from vqtoolkit.data.recipe import held_out_dataset

    coco_tree(tmp_path)
    trees = [f"data.val_images={tmp_path / 'coco' / 'train2017'}",
             f"data.val_paired.segmentation={tmp_path / 'cocostuffthings' / 'train2017'}"]
    recipe = load_recipe(RECIPES / "coco-stuff-segmentation-stage.toml", trees + ["data.size=16"])
    held_out = held_out_dataset(recipe, 3)
    assert len(held_out) == 3 and sorted(held_out[0]["paired"]) == ["segmentation"]
    assert held_out_dataset(load_recipe(RECIPES / "coco-stuff-segmentation-stage.toml"), 3) is None
    with pytest.raises(RecipeError, match=r"data.val_paired = .* is invalid: expected to be empty unless "
                                          r"data.val_images names the held-out image tree"):
        load_recipe(RECIPES / "coco-stuff-segmentation-stage.toml", trees[1:])
