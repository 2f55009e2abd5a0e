"""Encode and decode images larger than a VQGAN's training crop, tile by tile (`model.tile`).

GroupNorm normalises over the whole input, so a VQGAN trained on 64-pixel crops of large scenes
sees statistics no crop had when it runs on a 1024×576 image in one piece, and its codes and
pictures come out wrong. Tiles of the crop size, overlapping by half, give every encoder and
decoder call a training crop: each code comes from the tile it is most central in, and decoded
tiles are blended with sin² weights, which sum to one where two tiles overlap.
"""

from __future__ import annotations

from typing import Callable

import torch

TILE_BATCH = 32  # tiles per encoder/decoder call: bounds memory on large images


def tile_starts(n: int, tile: int) -> list[int]:
    """Starts of tiles of `tile` codes over an axis of `n`, overlapping by half, the last flush
    with the end (one tile of the whole axis when it is shorter than a tile)."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, max(1, tile // 2)))
    return starts if starts[-1] == n - tile else starts + [n - tile]


def nearest_tile(n: int, starts: list[int], size: int) -> list[int]:
    """For each index of an axis, the start of the tile whose centre is nearest (the first on ties)."""
    return [min(starts, key=lambda s: (abs(i + 0.5 - (s + size / 2)), s)) for i in range(n)]


def blend_weights(n: int, device: torch.device) -> torch.Tensor:
    """sin² over a tile of n pixels: positive everywhere, and two tiles offset by n/2 sum to one."""
    return torch.sin(torch.pi * (torch.arange(n, device=device) + 0.5) / n) ** 2


def encode_tiled(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, factor: int,
                 tile: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/f, W/f) codes, from tiles of `tile` codes; `encode` runs one batch of tiles."""
    f, B = factor, images.shape[0]
    h, w = images.shape[-2] // f, images.shape[-1] // f
    rows, cols = tile_starts(h, tile), tile_starts(w, tile)
    th, tw = min(tile, h), min(tile, w)
    boxes = [(r, c) for r in rows for c in cols]
    pieces = [images[:, :, r * f:(r + th) * f, c * f:(c + tw) * f] for r, c in boxes]
    codes = torch.cat([encode(torch.cat(pieces[i:i + TILE_BATCH]))
                       for i in range(0, len(pieces), TILE_BATCH)]).reshape(len(boxes), B, th, tw)
    out = torch.empty(B, h, w, dtype=codes.dtype, device=codes.device)
    row_of, col_of = nearest_tile(h, rows, th), nearest_tile(w, cols, tw)
    for k, (r, c) in enumerate(boxes):
        ys = [y for y in range(h) if row_of[y] == r]
        xs = [x for x in range(w) if col_of[x] == c]
        if ys and xs:
            out[:, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] = codes[k][:, ys[0] - r:ys[-1] + 1 - r,
                                                                  xs[0] - c:xs[-1] + 1 - c]
    return out


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor, factor: int,
                 tile: int) -> torch.Tensor:
    """(B, h, w) codes -> (B, C, h·f, w·f) images in [-1, 1], blended from decoded tiles of `tile` codes."""
    f, (B, h, w) = factor, indices.shape
    rows, cols = tile_starts(h, tile), tile_starts(w, tile)
    th, tw = min(tile, h), min(tile, w)
    boxes = [(r, c) for r in rows for c in cols]
    pieces = [indices[:, r:r + th, c:c + tw] for r, c in boxes]
    out, total = None, torch.zeros(1, 1, h * f, w * f, device=indices.device)
    weight = blend_weights(th * f, indices.device)[:, None] * blend_weights(tw * f, indices.device)[None, :]
    for i in range(0, len(boxes), TILE_BATCH):
        images = decode(torch.cat(pieces[i:i + TILE_BATCH])).clamp(-1, 1)
        images = images.reshape(-1, B, *images.shape[1:])  # (tiles, B, C, th·f, tw·f)
        if out is None:
            out = torch.zeros(B, images.shape[2], h * f, w * f, device=indices.device)
        for (r, c), image in zip(boxes[i:i + TILE_BATCH], images):
            out[:, :, r * f:(r + th) * f, c * f:(c + tw) * f] += image * weight
            total[:, :, r * f:(r + th) * f, c * f:(c + tw) * f] += weight
    return (out / total).clamp(-1, 1)
