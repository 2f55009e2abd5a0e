"""Where a smaller rectangle sits inside a larger one: `vqt sample --init IMAGE --anchor A` (outpainting).

Kept free of torch so the command line can list the anchors without loading it.
"""

from __future__ import annotations

from .errors import VqtError, did_you_mean

ANCHORS = ("center", "top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
"""The side or corner the init image keeps; the canvas grows away from it (centre: on every side)."""


def anchor_offset(inner: tuple[int, int], outer: tuple[int, int], anchor: str) -> tuple[int, int]:
    """(top, left) of an `inner` (h, w) rectangle placed at `anchor` inside `outer` (H, W).

    Centred axes split the margin with the odd unit at the bottom or right."""
    if anchor not in ANCHORS:
        raise VqtError(f"--anchor {anchor!r} is not one of {', '.join(ANCHORS)}{did_you_mean(anchor, ANCHORS)}")
    (h, w), (H, W) = inner, outer
    if h > H or w > W:
        raise VqtError(f"a {w}x{h} rectangle does not fit inside {W}x{H}")
    top = 0 if anchor.startswith("top") else H - h if anchor.startswith("bottom") else (H - h) // 2
    left = 0 if anchor.endswith("left") else W - w if anchor.endswith("right") else (W - w) // 2
    return top, left
