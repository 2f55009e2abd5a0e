"""The synthetic scenes as a dataset: item k is scene number `seed * 1_000_003 + k`, with its modalities."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vqtoolkit.errors import DataError
from vqtoolkit.images import convert_channels, to_tensor

from .render import NEAR_DEPTH, SKY_DEPTH, WORLDS, flip_pose, render_scene


class SyntheticScenes(Dataset):
    """`n` procedural scenes with paired depth, segmentation, pose and class label.

    Item k is scene `seed * 1_000_003 + k`. When `train`, it is flipped horizontally with
    probability 1/2, decided by a generator seeded from (seed, k, epoch), so the flip is the same
    in every worker and changes with `set_epoch`. All modalities flip together (pose x mirrored,
    left/right keypoints swapped).

    With `scene_size` = (height, width), scenes are that large and item k is a `size` x `size`
    crop of scene k at native scale (only the crop is rendered): training sees the pixel scale of
    a `scene_size` sample. The crop's position is drawn with the flip when `train`, and from
    (seed, k) otherwise, so held-out crops are fixed. Every modality comes from the same crop;
    `item["full_range"]["depth"]` is the whole scene's (min, max) depth, which the depth condition
    normalises by, as a sample's depth map of the whole scene is. With `scene_scale` = (lo, hi), each
    item's scene is `scene_size` times a factor drawn log-uniformly from [lo, hi] (each side at least
    `size`), so one model sees objects both whole and at `scene_size`'s native scale. `world` is how
    scenes look (see render.py): "random" colours, or "graded" by depth and height.

    With `object_crops` = p > 0, a fraction p of the crops is centred on a random pixel of an object
    (found in a thumbnail of the scene, so it costs a 1/8-size render). At native scale objects cover a
    few percent of a scene, so uniform crops almost never lie inside one: a VQGAN trained on them has no
    codes for an object's flat interior and paints it as the grass around it.
    """

    def __init__(self, n: int, size: int, *, seed: int = 0, train: bool = True, channels: int = 3,
                 scene_size: tuple[int, int] | None = None, scene_scale: tuple[float, float] | None = None,
                 world: str = "random", object_crops: float = 0.0) -> None:
        if n < 1:
            raise DataError(f"synthetic dataset size n must be at least 1, got {n}")
        if seed < 0:
            raise DataError(f"synthetic dataset seed must be >= 0, got {seed}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        if world not in WORLDS:
            raise DataError(f"synthetic world must be one of {', '.join(WORLDS)}, got {world!r}")
        if scene_size is not None and (scene_size[0] < size or scene_size[1] < size):
            raise DataError(f"scene size {scene_size[1]}x{scene_size[0]} is smaller than the {size}-pixel crops")
        self.n, self.size, self.seed, self.train, self.channels = n, size, seed, train, channels
        self.scene_size = None if scene_size is None else (int(scene_size[0]), int(scene_size[1]))
        if scene_scale is not None and (scene_size is None or not 0 < scene_scale[0] <= scene_scale[1] <= 1):
            raise DataError(f"scene scale {scene_scale} must be (lo, hi) with 0 < lo <= hi <= 1, with a scene size")
        self.scene_scale = scene_scale
        if not 0.0 <= object_crops <= 1.0 or (object_crops > 0 and scene_size is None):
            raise DataError(f"object_crops must be a fraction in [0, 1], above 0 only with a scene size, got {object_crops}")
        self.world, self.object_crops = world, object_crops
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's flips and crops (call before each epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict[str, object]:
        if not 0 <= k < self.n:
            raise IndexError(f"scene index {k} out of range for {self.n} scenes")
        rng = np.random.default_rng([self.seed, k, self.epoch] if self.train else [self.seed, k])
        flip = self.train and rng.random() < 0.5
        seed = self.seed * 1_000_003 + k
        if self.scene_size is None:
            scene = render_scene(seed, self.size, world=self.world)
            depth_range = (float(scene.depth.min()), float(scene.depth.max()))
        else:
            (h, w), s = self.scene_size, self.size
            if self.scene_scale is not None:
                lo, hi = np.log(self.scene_scale)
                factor = float(np.exp(rng.uniform(lo, hi)))
                h, w = max(s, round(h * factor)), max(s, round(w * factor))
            window = (int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1)), s, s)
            if self.object_crops > 0 and rng.random() < self.object_crops:
                window = _on_an_object(seed, (h, w), s, self.world, rng) or window
            scene = render_scene(seed, (h, w), window, self.world)
            depth_range = (NEAR_DEPTH, SKY_DEPTH)  # every scene's, whatever the crop (tests/test_synthetic.py)
        image, depth, seg, pose = scene.image, scene.depth, scene.segmentation, scene.pose
        if flip:
            image, depth, seg = image[:, ::-1], depth[:, ::-1], seg[:, ::-1]
            pose = flip_pose(pose, image.shape[1])
        return {
            "image": to_tensor(convert_channels(image, self.channels)),  # (C, H, W)
            "name": f"synthetic/{k:06d}",
            "paired": {  # exact modalities, aligned with the image (vqtoolkit.data.paired_array)
                "depth": np.array(depth),  # (H, W) float32, larger = farther
                "segmentation": np.array(seg),  # (H, W) int64 labels
                "pose": np.array(pose),  # (17, 3) float32 COCO keypoints
            },
            "full_range": {"depth": torch.tensor(depth_range, dtype=torch.float32)},  # (2,) the scene's min, max
            "label": torch.tensor(scene.label),  # () int64
        }


THUMBNAIL = 8  # object_crops finds objects in a render this many times smaller than the scene


def _on_an_object(seed: int, hw: tuple[int, int], size: int, world: str,
                  rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A `size` crop (top, left, size, size) of scene `seed` at `hw` centred on a random object pixel,
    or None when no object shows. A scene's layout scales with its size, so a thumbnail shows where
    its objects are."""
    h, w = hw
    th, tw = max(8, h // THUMBNAIL), max(8, w // THUMBNAIL)
    rows, cols = np.nonzero(render_scene(seed, (th, tw), world=world).instances)
    if rows.size == 0:
        return None
    k = int(rng.integers(rows.size))
    y, x = (rows[k] + rng.random()) * h / th, (cols[k] + rng.random()) * w / tw
    top = int(np.clip(round(y - size / 2), 0, h - size))
    left = int(np.clip(round(x - size / 2), 0, w - size))
    return top, left, size, size
