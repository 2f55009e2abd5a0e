"""The synthetic scenes as a dataset: item k is scene number `seed * 1_000_003 + k`, with its modalities."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vqtoolkit.errors import DataError
from vqtoolkit.images import convert_channels, to_tensor

from .render import flip_pose, render_scene


class SyntheticScenes(Dataset):
    """`n` procedural scenes with paired depth, segmentation, pose and class label.

    Item k is scene `seed * 1_000_003 + k`. When `train`, it is flipped horizontally with
    probability 1/2, decided by a generator seeded from (seed, k, epoch), so the flip is the same
    in every worker and changes with `set_epoch`. All modalities flip together (pose x mirrored,
    left/right keypoints swapped).
    """

    def __init__(self, n: int, size: int, *, seed: int = 0, train: bool = True, channels: int = 3) -> None:
        if n < 1:
            raise DataError(f"synthetic dataset size n must be at least 1, got {n}")
        if seed < 0:
            raise DataError(f"synthetic dataset seed must be >= 0, got {seed}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.n, self.size, self.seed, self.train, self.channels = n, size, seed, train, channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's flips (call before each epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict[str, object]:
        if not 0 <= k < self.n:
            raise IndexError(f"scene index {k} out of range for {self.n} scenes")
        scene = render_scene(self.seed * 1_000_003 + k, self.size)
        image, depth, seg, pose = scene.image, scene.depth, scene.segmentation, scene.pose
        if self.train and np.random.default_rng([self.seed, k, self.epoch]).random() < 0.5:
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
            "label": torch.tensor(scene.label),  # () int64
        }
