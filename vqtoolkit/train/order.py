"""The order in which a run sees its data, made resumable.

A resumed run must continue with the very batch an uninterrupted run would have drawn next, also on
another number of processes; so the order is a pure function of (seed, epoch, position), not of a
DataLoader's internal state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .runtime import Runtime


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices (as DistributedSampler) that can start mid-epoch.

    Epoch e is a permutation seeded by (seed, e); rank r takes every world-th index. The tail that
    does not fill a global batch is dropped so every rank sees the same number of equal batches.
    """

    def __init__(self, n: int, batch_size: int, rt: Runtime, seed: int, shuffle: bool = True) -> None:
        per_rank = n // rt.world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"the dataset has {n} items, fewer than one batch "
                            f"({batch_size} per process × {rt.world_size} processes)")
        self.n, self.batch_size, self.rt, self.seed, self.shuffle = n, batch_size, rt, seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, batches_done: int) -> None:
        self.epoch, self.start_batch = divmod(batches_done, self.batches_per_epoch)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rt.rank::self.rt.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size:])


def batch_stream(dataset: Dataset, batch_size: int, rt: Runtime, seed: int, num_workers: int,
                 batches_done: int) -> Iterator[dict[str, Any]]:
    """Endless batches, starting after `batches_done` batches of this run's data order."""
    sampler = ResumableSampler(len(dataset), batch_size, rt, seed)
    sampler.set_position(batches_done)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(sampler.epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            drop_last=True, pin_memory=rt.device.type == "cuda",
                            persistent_workers=False)
        yield from loader
        sampler.set_position((sampler.epoch + 1) * sampler.batches_per_epoch)
