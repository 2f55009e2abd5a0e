"""Image, array and codes I/O with validation.

Everything that reads a user's file goes through here, so a bad file fails once, early, with an
`ImageError` naming the file and the fix, instead of deep inside a training step. Writers are atomic
(temporary file in the same folder, fsync, `os.replace`) so an interrupted run never leaves a
half-written PNG or codes file, and they refuse to overwrite unless asked (`--force`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps

from vqtoolkit.errors import ImageError
from vqtoolkit.fileio import atomic_path

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest image (width x height) we decode: 64 MP, far above any training image, far below a bomb."""

MIN_SIDE = 2
"""Smallest width/height accepted: a 1-pixel image is always a mistake (or a tracking pixel)."""

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_INDEX_MODES = {"P", "L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"}

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# Reading


class NamedBytes(str):
    """A file's bytes held in memory (a member of a WebDataset shard), named by where they came from.
    Every reader here takes one for a path, so a file from an archive gets the checks and errors of one
    on disk; being a str (its name), it prints and batches like a path."""

    data: bytes

    def __new__(cls, name: str, data: bytes) -> NamedBytes:
        self = super().__new__(cls, name)
        self.data = data
        return self

    def __reduce__(self) -> tuple[type, tuple[str, bytes]]:
        return NamedBytes, (str(self), self.data)


def _readable(path: PathLike, what: str) -> Path | io.BytesIO:
    """What to hand a decoder: the bytes of a NamedBytes, or the path of an existing file."""
    if isinstance(path, NamedBytes):
        return io.BytesIO(path.data)
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{what} {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    return path


def read_bytes(path: PathLike) -> bytes:
    """A file's bytes, or a NamedBytes' own: for files not decoded here (keypoint JSON). Raises as Path.read_bytes."""
    return path.data if isinstance(path, NamedBytes) else Path(path).read_bytes()


def _open(path: PathLike, max_pixels: int) -> Image.Image:
    """Open, fully decode and EXIF-orient an image, turning every failure into an ImageError."""
    source = _readable(path, "image")
    path = Path(path)
    try:
        # Our own `max_pixels` check below is authoritative, so Pillow's soft warning is noise;
        # its hard error (2x Pillow's global limit) still fires and is converted below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"image {path} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                    "pixels (a guard against decompression bombs); raise the limit (max_pixels) "
                    "if the file is trusted"
                )
            if w < MIN_SIDE or h < MIN_SIDE:
                raise ImageError(f"image {path} is {w}x{h}; images must be at least {MIN_SIDE}x{MIN_SIDE}")
            img.load()  # force a full decode so truncated data fails here, not later
            return ImageOps.exif_transpose(img)  # a copy, independent of the closed file
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"image {path} is too large for Pillow's own bomb guard ({e}); if the file is trusted, "
            "raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels"
        ) from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"image {path} is not an image file Pillow can read") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"image {path} is truncated or corrupt: {e}") from e


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """Map a 16-bit range (0..65535) onto 0..255 with rounding; 65535/257 == 255 exactly."""
    a = np.clip(a.astype(np.float64), 0, 65535)
    return np.round(a / 257.0).astype(np.uint8)


def convert_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Return `arr` (H, W) or (H, W, 1|3) uint8 as (H, W, channels); grey uses Pillow's ITU-R 601 luma."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)  # (H, W, 3)
    return np.asarray(Image.fromarray(arr, "RGB").convert("L"))[:, :, None]  # (H, W, 1)


def load_image(path: PathLike, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any common image as uint8 (H, W, channels).

    Palette, CMYK and grey images are converted; transparency is composited on white (what a
    viewer shows); 16-bit data ("I;16", "I") is scaled to 8 bits rather than clipped, so a
    16-bit PNG looks the same as its 8-bit export.
    """
    if channels not in (1, 3):
        raise ImageError(f"channels must be 1 or 3, got {channels}")
    img = _open(path, max_pixels)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = _sixteen_to_eight(np.asarray(img))  # (H, W)
    elif mode == "F":
        raise ImageError(
            f"image {path} holds floating-point data; it is not a picture (use it as a depth/array "
            "input, which keeps full precision)"
        )
    elif mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        arr = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    elif mode in ("L", "RGB"):
        arr = np.asarray(img)
    elif mode == "1":
        arr = np.asarray(img.convert("L"))
    else:  # P, CMYK, YCbCr, LAB, HSV, ...
        try:
            arr = np.asarray(img.convert("RGB"))
        except (ValueError, OSError) as e:
            raise ImageError(f"image {path} has mode {mode}, which cannot be converted to RGB") from e
    return np.array(convert_channels(arr, channels))  # writable: Pillow's arrays are read-only


def load_npy(path: PathLike) -> np.ndarray:
    """np.load without pickles; non-.npy content becomes an ImageError naming the file."""
    source = _readable(path, "array file")
    if isinstance(source, io.BytesIO):
        magic = source.getvalue()[:6]
    else:
        with open(source, "rb") as f:
            magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # .npy header or .npz (zip)
        raise ImageError(f"{path} is not a valid .npy file (no NumPy header); save arrays with np.save")
    try:
        arr = np.load(source, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ImageError(f"{path} holds Python objects (pickled data), which are never loaded") from e
        raise ImageError(f"{path} is not a valid .npy file: {e}") from e
    except (OSError, EOFError) as e:
        raise ImageError(f"{path} is not a valid .npy file: {e}") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise ImageError(f"{path} is an .npz archive; expected a single array saved with np.save")
    return arr


def _single_channel(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Accept (H, W), (H, W, 1) or (1, H, W); anything else is not single-channel data."""
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[2]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
    if arr.ndim != 2:
        raise ImageError(f"{what} {path} has shape {arr.shape}; expected a single channel (H, W)")
    h, w = arr.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"{what} {path} is {w}x{h}; it must be at least {MIN_SIDE}x{MIN_SIDE}")
    return arr


def load_array(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read single-channel data (16-bit PNG, float TIFF, .npy) as float32 (H, W), unquantised.

    Depth maps lose their meaning at 8 bits, so values are returned as stored (no rescaling);
    non-finite values are rejected because they would silently poison normalisation.
    """
    if Path(path).suffix.lower() == ".npy":
        arr = load_npy(path)
        if arr.dtype.kind not in "iufb":
            raise ImageError(f"array {path} has dtype {arr.dtype}; expected numbers")
    else:
        img = _open(path, max_pixels)
        if img.mode not in _INDEX_MODES | {"F"}:
            raise ImageError(
                f"array {path} is a {img.mode} image; expected single-channel data "
                "(greyscale, 16-bit or float)"
            )
        arr = np.asarray(img)
    arr = _single_channel(arr, path, "array").astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ImageError(f"array {path} has {bad} non-finite values (NaN/inf); fill them first")
    return arr


def image_mode(path: PathLike) -> str | None:
    """The Pillow mode of an image file (e.g. "RGBA"), from its header alone; None when it is not an
    image Pillow knows (e.g. .npy) or cannot be opened: the loaders then say why."""
    try:
        with Image.open(io.BytesIO(path.data) if isinstance(path, NamedBytes) else path) as img:
            return img.mode
    except (OSError, ValueError, SyntaxError, EOFError):
        return None


def load_rgba(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The stored bytes of an 8-bit RGBA image as uint8 (H, W, 4): not composited, not converted,
    for formats that pack other data into the four bytes of a pixel."""
    img = _open(path, max_pixels)
    if img.mode != "RGBA":
        raise ImageError(f"image {path} is a {img.mode} image; expected an 8-bit RGBA image")
    return np.array(img)  # (H, W, 4), writable


def load_label_map(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a label map as int64 (H, W): palette indices or grey values, never colour-converted."""
    if Path(path).suffix.lower() == ".npy":
        arr = load_npy(path)
        if arr.dtype.kind not in "iu":
            raise ImageError(f"label map {path} has dtype {arr.dtype}; expected integers")
    else:
        img = _open(path, max_pixels)
        if img.mode not in _INDEX_MODES:
            raise ImageError(
                f"label map {path} is a {img.mode} image; expected palette or greyscale indices "
                "(save labels as a mode 'P', 'L' or 16-bit PNG)"
            )
        arr = np.asarray(img)
    arr = _single_channel(arr, path, "label map").astype(np.int64)
    if arr.min() < 0:
        raise ImageError(f"label map {path} has negative label {int(arr.min())}; labels start at 0")
    return arr


def pixel_size(path: PathLike) -> tuple[int, int] | None:
    """(H, W) of an image (as read: EXIF rotation applied) or a 2-D .npy file, from its header
    alone; None when `path` is no file whose size can be read this way (a .json, a number, ...)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".npy":
        try:
            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape = read_header(f)[0]
        except (ValueError, OSError, EOFError):
            return None
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        return (int(shape[0]), int(shape[1])) if len(shape) in (2, 3) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation: a quarter turn
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (w, h) if rotated else (h, w)


# --------------------------------------------------------------------------------------------
# Tensors


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1], the range the autoencoder works in."""
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"to_tensor expects uint8 (H, W, C), got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.array(arr, order="C")).permute(2, 0, 1)  # (C, H, W); copied: views, read-only ok
    return t.float() / 127.5 - 1.0


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float (C, H, W) or (B, C, H, W) in [-1, 1] -> uint8 (H, W, C) or (B, H, W, C), clamped."""
    if t.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects (C, H, W) or (B, C, H, W), got shape {tuple(t.shape)}")
    t = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    t = t.permute(1, 2, 0) if t.ndim == 3 else t.permute(0, 2, 3, 1)  # (..., H, W, C)
    return t.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Writing


def atomic_save(path: PathLike, force: bool, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through `fileio.atomic_path` (temp file, fsync, rename); refuse to overwrite."""
    with atomic_path(path, force=force) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def save_png(array: np.ndarray, path: PathLike, force: bool = False) -> Path:
    """Atomically write uint8 (H, W) or (H, W, 1|3|4), or uint16 (H, W) as a 16-bit PNG (depth maps);
    never overwrites unless `force`."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint16 and array.ndim == 2:
        img16 = Image.fromarray(np.ascontiguousarray(array))
        return atomic_save(path, force, lambda f: img16.save(f, format="PNG"))
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, or uint16 (H, W), got {array.dtype} {array.shape}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"save_png expects (H, W) or (H, W, 1|3|4), got {array.shape}")
    img = Image.fromarray(np.ascontiguousarray(array))
    return atomic_save(path, force, lambda f: img.save(f, format="PNG"))


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile uint8 images into one RGB (H, W, 3) grid with `pad` white pixels around every cell.

    Columns are as wide as their widest image and rows as tall as their tallest, and each image
    sits top-left in its cell, so mixed sizes (e.g. a condition map beside its sample) line up.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one image")
    cells = [[convert_channels(im, 3) for im in row] for row in rows]
    n_cols = max(len(row) for row in cells)
    col_w = [max((row[c].shape[1] for row in cells if c < len(row)), default=0) for c in range(n_cols)]
    row_h = [max((im.shape[0] for im in row), default=0) for row in cells]
    canvas = np.full((sum(row_h) + pad * (len(cells) + 1), sum(col_w) + pad * (n_cols + 1), 3), 255, np.uint8)
    y = pad
    for row, h in zip(cells, row_h):
        x = pad
        for im, w in zip(row, col_w):
            canvas[y : y + im.shape[0], x : x + im.shape[1]] = im
            x += w + pad
        y += h + pad
    return canvas


# --------------------------------------------------------------------------------------------
# Sizes


def check_size(
    h: int, w: int, factor: int, *, name: str = "image", remedy: str | None = "pass --crop or --pad"
) -> None:
    """Raise an ImageError naming the nearest valid sizes when h or w is not a multiple of `factor`.

    Sizes are written WxH, as on the command line (`--size WxH`).
    """
    if h > 0 and w > 0 and h % factor == 0 and w % factor == 0:
        return
    down = (w // factor * factor, h // factor * factor)
    up = (-(-w // factor) * factor, -(-h // factor) * factor)
    options = [f"{a}x{b}" for a, b in (down, up) if a > 0 and b > 0]
    options = list(dict.fromkeys(options))
    msg = f"{name} is {w}x{h}; the model needs multiples of {factor}: use {' or '.join(options)}"
    raise ImageError(msg + (f", or {remedy}" if remedy else ""))


def crop_or_pad_to_multiple(arr: np.ndarray, factor: int, mode: str = "crop") -> np.ndarray:
    """Make (H, W[, C]) a multiple of `factor` in both axes.

    "crop" takes the centre (the usual subject position). "pad" appends rows/columns at the
    bottom/right by repeating the edge: the original stays at the origin, so `out[:H, :W]`
    recovers it after decoding, and repeated edges do not invent borders the model must encode
    (reflection would also fail when the pad exceeds the image).
    """
    h, w = arr.shape[:2]
    if mode == "crop":
        nh, nw = h // factor * factor, w // factor * factor
        if nh == 0 or nw == 0:
            raise ImageError(f"image is {w}x{h}, smaller than one {factor}x{factor} cell; use --pad")
        top, left = (h - nh) // 2, (w - nw) // 2
        return arr[top : top + nh, left : left + nw]
    if mode == "pad":
        ph, pw = -h % factor, -w % factor
        widths = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
        return np.pad(arr, widths, mode="edge")
    raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
