"""Helpers the built-in modalities share: size checks, paired files, channel checks, pictures.

Only public vqtoolkit API is used here, so a third-party plugin can do the same things the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vqtoolkit.data import paired_array
from vqtoolkit.errors import DataError, ImageError, VqtError


def check_size(hw: tuple[int, ...], size: tuple[int, int], path: str, what: str) -> None:
    """A --cond file must match `vqt sample --size` exactly: a resize would misplace the condition."""
    if tuple(hw) != tuple(size):
        raise ImageError(f"{what} {path} is {hw[1]}x{hw[0]} but --size is {size[1]}x{size[0]}; "
                         f"give a {what} of exactly the sample size")


def paired(item: dict[str, Any], name: str, load: Callable[[str], np.ndarray], mode: str) -> np.ndarray | None:
    """This modality of an item, aligned with its image: the synthetic scenes' array, or a paired
    folder's file loaded and cut like the image; None when the item has none."""
    return paired_array(item, name, load, mode=mode)


def missing(item: dict[str, Any], name: str, key: str) -> DataError:
    """The error for a dataset item that carries neither `key` nor a paired `name` file."""
    return DataError(f"dataset item {item.get('name', '?')!r} has no {key}: condition '{name}' reads it from "
                     f"data.source = \"synthetic\", or from a {name}/ folder with data.source = \"paired\"")


def check_channels(raw: torch.Tensor, channels: int, name: str) -> None:
    """Raw spatial conditions are (C, H, W) or (B, C, H, W) with a known C."""
    if raw.ndim not in (3, 4) or raw.shape[-3] != channels:
        raise VqtError(f"condition '{name}' expects raw maps of {channels} channel(s), (C, H, W) or "
                       f"(B, C, H, W); got shape {tuple(raw.shape)}")


def grey_picture(values: torch.Tensor) -> np.ndarray:
    """(H, W) floats in [0, 1] -> RGB uint8 (H, W, 3)."""
    grey = (values.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(grey[:, :, None], 3, axis=2)


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (uint8 (n, 3)): the PASCAL VOC bit-interleaved palette, fixed for any n."""
    colours = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def hue_colours(n: int) -> np.ndarray:
    """n saturated colours evenly spaced in hue, float (n, 3) in [0, 1]."""
    h = np.arange(n)[:, None] / n * 6.0  # (n, 1)
    rgb = np.clip(np.abs((h + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)  # (n, 3)
    return rgb.astype(np.float32)
