"""Depth files: single-channel data as stored, or taming-transformers' float32 packed into RGBA PNGs.

taming's `scripts/extract_depth.py` stores each float32 MiDaS map by viewing its bytes as a uint8
(H, W, 4) array and saving that as an RGBA PNG; `taming/data/imagenet.py` (`rgba_to_depth`) views
the bytes back. Such a file looks like a mostly transparent picture, and any RGBA picture decodes
to some floats, so `encoding = "auto"` decides on evidence:

- a picture is refused when its floats cannot be depth: an opaque pixel (alpha 255 is the float's
  sign and top exponent bits) decodes to NaN, infinity or about -3e38, and a transparent one to
  about 1e-38 or less;
- the rare picture whose floats do look plausible (a uniform alpha near 64 or 192) is an error that
  names the option when the map is constant or never positive, or when the lowest float byte (the
  red channel) changes between neighbours as smoothly as a picture's rather than as the noise that
  low mantissa bits are.
"""

from __future__ import annotations

import numpy as np

from vqtoolkit.errors import ImageError
from vqtoolkit.images import image_mode, load_array, load_rgba

PLAUSIBLE = (2.0 ** -30, 2.0 ** 40)  # |depth| of any real map (nonzero values): metric, millimetres, MiDaS
PICTURE_STEP = 32  # below this mean change of the lowest float byte between neighbours, a picture's (noise: ~85)
MIN_PAIRS = 16  # neighbours with different floats needed to judge that byte at all


def decode_taming_rgba(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) -> float32 (H, W): each pixel's four bytes are one little-endian float32."""
    return np.ascontiguousarray(rgba, dtype=np.uint8).view("<f4")[:, :, 0].astype(np.float32)


def _not_depth(depth: np.ndarray) -> str | None:
    """Why these decoded floats cannot be a depth map, or None."""
    bad = int(np.count_nonzero(~np.isfinite(depth)))
    if bad:
        return f"{bad} of its {depth.size} pixels decode to NaN or infinity"
    size = np.abs(depth[depth != 0])
    if size.size and (size.min() < PLAUSIBLE[0] or size.max() > PLAUSIBLE[1]):
        return f"its pixels decode to magnitudes from {size.min():.3g} to {size.max():.3g}"
    return None


def _unclear(rgba: np.ndarray, depth: np.ndarray) -> str | None:
    """Why plausible floats might still be a picture's bytes, or None when they look like depth."""
    if float(depth.min()) == float(depth.max()):
        return f"it decodes to the constant {float(depth.min()):.6g}"
    if float(depth.max()) <= 0:
        return "it decodes to no positive value"
    low = rgba[:, :, 0].astype(np.int16)  # (H, W): the lowest mantissa byte
    changing = depth[:, 1:] != depth[:, :-1]  # (H, W - 1): neighbours whose floats differ
    if int(changing.sum()) >= MIN_PAIRS and low.min() != low.max():
        step = float(np.abs(low[:, 1:] - low[:, :-1])[changing].mean())
        if step < PICTURE_STEP:
            return (f"its lowest float byte changes by {step:.0f} on average between neighbours, as a picture's "
                    "red channel does, not like the noise of low mantissa bits (about 85)")
    return None


def read_depth(path: str, encoding: str) -> np.ndarray:
    """A depth file as float32 (H, W): 16-bit PNG, float TIFF, .npy, or taming's packed RGBA PNG."""
    rgba_file = image_mode(path) == "RGBA"
    if encoding == "plain" or (encoding == "auto" and not rgba_file):
        if rgba_file:
            raise ImageError(f"depth map {path} is an RGBA image, but condition.encoding = \"plain\" reads "
                             "single-channel data (greyscale, 16-bit, float, .npy); set condition.encoding = "
                             "\"auto\" or \"taming-rgba\" if it holds taming-transformers' packed float32 depth")
        return load_array(path)
    if not rgba_file:
        raise ImageError(f"depth map {path} is not an 8-bit RGBA PNG, but condition.encoding = \"taming-rgba\" "
                         "reads taming-transformers' float32 depth packed into RGBA; set condition.encoding = "
                         "\"auto\" or \"plain\" for single-channel files")
    rgba = load_rgba(path)
    depth = decode_taming_rgba(rgba)
    reason = _not_depth(depth)
    if reason and encoding == "taming-rgba":
        raise ImageError(f"depth map {path} is not taming's packed float32 depth: {reason} "
                         "(condition.encoding = \"taming-rgba\")")
    if reason:
        raise ImageError(f"depth map {path} is an RGBA picture, not depth: read as taming-transformers' packed "
                         f"float32 depth (condition.encoding = \"auto\"), {reason}; give depth as "
                         "single-channel data (16-bit PNG, float TIFF or .npy)")
    unclear = _unclear(rgba, depth) if encoding == "auto" else None
    if unclear:
        raise ImageError(f"cannot tell whether depth map {path} holds taming-transformers' packed float32 depth "
                         f"or is an RGBA picture: {unclear}; set condition.encoding = \"taming-rgba\" if it is "
                         "packed depth, or give depth as single-channel data (16-bit PNG, float TIFF or .npy)")
    return depth
