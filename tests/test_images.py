"""Image, array and codes I/O: every conversion, every rejection, atomic writes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.codes import load_codes, save_codes
from vqtoolkit.errors import ImageError, VqtError
from vqtoolkit.images import (
    check_size,
    crop_or_pad_to_multiple,
    image_grid,
    load_array,
    load_image,
    load_label_map,
    save_png,
    to_tensor,
    to_uint8,
)

RED = (255, 0, 0)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


# -- conversions -------------------------------------------------------------------------------


def test_rgb_and_grayscale_channel_conversions(tmp_path):
    rgb = _save(Image.new("RGB", (5, 3), RED), tmp_path / "red.png")
    a = load_image(rgb)
    assert a.shape == (3, 5, 3) and a.dtype == np.uint8 and (a == RED).all()
    grey = load_image(rgb, channels=1)
    assert grey.shape == (3, 5, 1) and (grey == 76).all()  # ITU-R 601: 0.299 * 255
    l_img = _save(Image.new("L", (4, 4), 200), tmp_path / "grey.png")
    assert (load_image(l_img) == 200).all() and load_image(l_img).shape == (4, 4, 3)
    bilevel = _save(Image.new("1", (4, 4), 1), tmp_path / "bw.png")
    assert (load_image(bilevel) == 255).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = _save(Image.new("RGBA", (4, 4), (255, 0, 0, 128)), tmp_path / "rgba.png")
    a = load_image(rgba).astype(int)
    assert np.abs(a - (255, 127, 127)).max() <= 1
    clear = _save(Image.new("LA", (4, 4), (0, 0)), tmp_path / "la.png")
    assert (load_image(clear) == 255).all()


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert (load_image(_save(img, tmp_path / "p.png")) == (10, 20, 30)).all()
    transparent = _save(img, tmp_path / "pt.png", transparency=1)
    assert (load_image(transparent) == 255).all()


def test_cmyk(tmp_path):
    path = _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.tif")
    assert (load_image(path) == RED).all()


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    data = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    path = _save(Image.fromarray(data), tmp_path / "d16.png")
    assert _mode(path) == "I;16"
    a = load_image(path, channels=1)[:, :, 0]
    np.testing.assert_array_equal(a, [[0, 100], [255, 7]])
    i32 = _save(Image.fromarray(data.astype(np.int32)), tmp_path / "i32.tif")
    assert _mode(i32) == "I"
    np.testing.assert_array_equal(load_image(i32, channels=1)[:, :, 0], [[0, 100], [255, 7]])


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = RED  # left half red, right half blue
    arr[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    path = _save(Image.fromarray(arr), tmp_path / "rot.jpg", exif=exif, quality=95)
    a = load_image(path).astype(int)
    assert a.shape == (16, 8, 3)  # portrait after rotation
    assert a[:6, :, 0].min() > 200 and a[:6, :, 2].max() < 60  # left half became the top
    assert a[10:, :, 2].min() > 200 and a[10:, :, 0].max() < 60


# -- rejections --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png does not exist"):
        load_image(tmp_path / "nope.png")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not an image")
    with pytest.raises(ImageError, match=r"notes\.png is not an image file"):
        load_image(path)


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = _save(Image.fromarray(noise), tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"cut\.png is truncated or corrupt"):
        load_image(cut)


def test_too_small(tmp_path):
    with pytest.raises(ImageError, match=r"dot\.png is 1x1; images must be at least 2x2"):
        load_image(_save(Image.new("RGB", (1, 1)), tmp_path / "dot.png"))


def test_bomb_guard_with_tiny_limit(tmp_path):
    path = _save(Image.new("RGB", (40, 30)), tmp_path / "big.png")
    msg = r"big\.png is 40x30 = 1200 pixels, above the limit of 1000.*max_pixels"
    with pytest.raises(ImageError, match=msg):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)


def test_pillow_bomb_error_is_converted(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (40, 30)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's hard error fires above 200
    with pytest.raises(ImageError, match=r"big\.png is too large for Pillow.*MAX_IMAGE_PIXELS"):
        load_image(path)


def test_float_image_is_not_a_picture(tmp_path):
    path = _save(Image.fromarray(np.ones((4, 4), np.float32)), tmp_path / "f.tif")
    with pytest.raises(ImageError, match="floating-point"):
        load_image(path)


# -- arrays and label maps ---------------------------------------------------------------------


def test_load_array_keeps_full_precision(tmp_path):
    data = np.array([[0, 1234], [65535, 7]], np.uint16)
    a = load_array(_save(Image.fromarray(data), tmp_path / "depth.png"))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, data.astype(np.float32))
    f = np.array([[0.25, 1.5], [3.0, 1e4]], np.float32)
    np.testing.assert_array_equal(load_array(_save(Image.fromarray(f), tmp_path / "d.tif")), f)
    np.save(tmp_path / "d.npy", f[None].astype(np.float64))  # (1, H, W) is single-channel too
    np.testing.assert_array_equal(load_array(tmp_path / "d.npy"), f)


def test_load_array_rejections(tmp_path):
    with pytest.raises(ImageError, match=r"rgb\.png is a RGB image; expected single-channel"):
        load_array(_save(Image.new("RGB", (4, 4)), tmp_path / "rgb.png"))
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1], [2, np.inf]]))
    with pytest.raises(ImageError, match=r"nan\.npy has 2 non-finite"):
        load_array(tmp_path / "nan.npy")
    np.save(tmp_path / "three.npy", np.zeros((4, 4, 3)))
    with pytest.raises(ImageError, match=r"has shape \(4, 4, 3\)"):
        load_array(tmp_path / "three.npy")


def test_load_label_map_indices_not_colours(tmp_path):
    idx = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
    img = Image.fromarray(idx, "L").convert("P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    np.testing.assert_array_equal(load_label_map(_save(img, tmp_path / "seg.png")), idx)
    big = np.array([[0, 300], [1000, 2]], np.uint16)
    out = load_label_map(_save(Image.fromarray(big), tmp_path / "seg16.png"))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, big)
    with pytest.raises(ImageError, match=r"rgb\.png is a RGB image; expected palette"):
        load_label_map(_save(Image.new("RGB", (4, 4)), tmp_path / "rgb.png"))
    np.save(tmp_path / "neg.npy", np.array([[0, -1], [1, 2]]))
    with pytest.raises(ImageError, match="negative label -1"):
        load_label_map(tmp_path / "neg.npy")


# -- tensors -----------------------------------------------------------------------------------


def test_tensor_round_trip():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14
    t = to_tensor(arr)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert t[0, 0, 0] == -1.0 and to_tensor(np.full((1, 1, 1), 255, np.uint8)).item() == 1.0
    np.testing.assert_array_equal(to_uint8(t), arr)
    batch = to_uint8(torch.stack([t, t * 5]))  # out-of-range values are clamped
    assert batch.shape == (2, 2, 3, 3) and batch[1].max() == 255


# -- writing -----------------------------------------------------------------------------------


def test_save_png_is_atomic_and_refuses_overwrite(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "a" / "b" / "out.png"
    save_png(arr, path)
    np.testing.assert_array_equal(load_image(path), arr)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp files left
    with pytest.raises(VqtError, match=r"out\.png already exists; pass --force"):
        save_png(arr[:, :, :1], path)
    save_png(arr[:, :, 0], path, force=True)
    np.testing.assert_array_equal(load_image(path, channels=1)[:, :, 0], arr[:, :, 0])
    assert len(list(path.parent.iterdir())) == 1


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(VqtError, match="disk full"):
        save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_image_grid_layout():
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((2, 3), 20, np.uint8)  # greyscale, smaller
    c = np.full((5, 5, 1), 30, np.uint8)
    g = image_grid([[a, b], [c]], pad=1)
    # columns 6 and 3 wide, rows 4 and 5 tall, 1-pixel padding around every cell
    assert g.shape == (1 + 4 + 1 + 5 + 1, 1 + 6 + 1 + 3 + 1, 3)
    assert (g[1:5, 1:7] == 10).all() and (g[1:3, 8:11] == 20).all() and (g[6:11, 1:6] == 30).all()
    assert (g[3:5, 8:11] == 255).all() and (g[0] == 255).all() and (g[6:11, 6:] == 255).all()


# -- codes -------------------------------------------------------------------------------------


def test_codes_round_trip(tmp_path):
    codes = np.random.default_rng(2).integers(0, 1024, (3, 4, 5))
    path = save_codes(codes, tmp_path / "c" / "codes.npy")
    assert np.load(path).dtype == np.int32
    out = load_codes(path, n_codes=1024)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, codes)
    save_codes(codes[0], tmp_path / "one.npy")
    np.testing.assert_array_equal(load_codes(tmp_path / "one.npy"), codes[0])
    with pytest.raises(VqtError, match="pass --force"):
        save_codes(codes, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["codes.npy"]


def test_codes_rejections(tmp_path):
    def saved(name, arr, **kw):
        np.save(tmp_path / name, arr, **kw)
        return tmp_path / name

    with pytest.raises(ImageError, match=r"f\.npy has dtype float32; expected integer"):
        load_codes(saved("f.npy", np.zeros((2, 2), np.float32)))
    with pytest.raises(ImageError, match=r"v\.npy has shape \(4,\)"):
        load_codes(saved("v.npy", np.arange(4)))
    with pytest.raises(ImageError, match=r"neg\.npy has negative index -3 at \(1, 0\)"):
        load_codes(saved("neg.npy", np.array([[0, 1], [-3, 2]])))
    with pytest.raises(ImageError, match=r"big\.npy has index 16 at \(0, 1\).*16 codes \(0\.\.15\)"):
        load_codes(saved("big.npy", np.array([[0, 16], [3, 2]])), n_codes=16)
    obj = saved("obj.npy", np.array([[1, "x"]], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=r"obj\.npy holds Python objects"):
        load_codes(obj)
    np.savez(tmp_path / "z.npz", a=np.zeros((2, 2), int))
    with pytest.raises(ImageError, match=r"z\.npz is an \.npz archive"):
        load_codes(tmp_path / "z.npz")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ImageError, match=r"text\.npy is not a valid \.npy"):
        load_codes(tmp_path / "text.npy")
    with pytest.raises(ImageError, match=r"gone\.npy does not exist"):
        load_codes(tmp_path / "gone.npy")


# -- sizes -------------------------------------------------------------------------------------


def test_check_size_names_nearest_valid_sizes():
    check_size(64, 96, 16)  # fine
    with pytest.raises(ImageError) as e:
        check_size(70, 100, 16, name="image a.png")
    assert str(e.value) == (
        "image a.png is 100x70; the model needs multiples of 16: use 96x64 or 112x80, or pass --crop or --pad"
    )
    with pytest.raises(ImageError, match=r"^--size is 8x8; the model needs multiples of 16: use 16x16$"):
        check_size(8, 8, 16, name="--size", remedy=None)


def test_crop_or_pad_to_multiple():
    arr = np.arange(7 * 10).reshape(7, 10)
    crop = crop_or_pad_to_multiple(arr, 4, "crop")
    np.testing.assert_array_equal(crop, arr[1:5, 1:9])  # centre
    pad = crop_or_pad_to_multiple(arr[..., None], 4, "pad")
    assert pad.shape == (8, 12, 1)
    np.testing.assert_array_equal(pad[:7, :10, 0], arr)
    np.testing.assert_array_equal(pad[7, :10, 0], arr[6])  # edge repeated
    np.testing.assert_array_equal(pad[:7, 11, 0], arr[:, 9])
    with pytest.raises(ImageError, match="use --pad"):
        crop_or_pad_to_multiple(arr, 16, "crop")


def test_save_png_writes_16_bit_maps(tmp_path):
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    save_png(depth, tmp_path / "d.png")
    img = Image.open(tmp_path / "d.png")
    assert img.mode in ("I;16", "I") and np.array_equal(np.asarray(img), depth)
