"""WebDataset shards under DDP (gloo, 2 processes): each sample once per epoch, resume from the position.

Kept apart from test_shards.py so that spawned ranks import only this light module.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("webdataset")


def _epochs_main(rank: int, world: int, port: int, urls: str, out: str) -> None:
    """One rank: an epoch and a batch straight, then the same run stopped after one batch and resumed."""
    from vqtoolkit.train.order import batch_stream
    from vqtoolkit.train.runtime import Runtime
    from vqtoolkit_plugins.shards.reader import ShardDataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    mp.set_start_method("fork", force=True)  # as under torchrun; a spawned rank would spawn its workers too
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rt = Runtime(torch.device("cpu"), rank, world)
        data = ShardDataset(urls, 8)

        def names(batches_done: int, count: int) -> list[list[str]]:
            stream = batch_stream(data, 2, rt, seed=5, num_workers=2, batches_done=batches_done)
            return [next(stream)["name"] for _ in range(count)]

        mine = {"straight": names(0, 3), "stopped": names(0, 1), "resumed": names(1, 2)}
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            with open(os.path.join(out, "names.json"), "w") as f:
                json.dump(everyone, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_see_each_sample_once_per_epoch_and_resume_from_the_position(tmp_path):
    """9 samples in 5 shards, 2 gloo ranks of 2 workers, batches of 2: an epoch is 2 batches per rank
    (the ragged sample dropped, as for every source); stopping after one batch and resuming gives the
    very batches of the uninterrupted run, into the next epoch."""
    from .test_ddp import _free_port
    from .test_shards import make_folder, shard

    folder = make_folder(tmp_path / "imgs", 9)
    assert shard(folder, "-o", tmp_path / "s", "--per-shard", 2).exit_code == 0
    urls = f"{tmp_path}/s/shard-{{000000..000004}}.tar"
    mp.start_processes(_epochs_main, args=(2, _free_port(), urls, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = json.loads((tmp_path / "names.json").read_text())
    every = {"img0", "img1", "img2", "sub/img3", "img4", "img_5", "img6", "img7", "img8"}
    seen = [name for rank in ranks for batch in rank["straight"][:2] for name in batch]
    assert len(seen) == len(set(seen)) == 8 and set(seen) < every  # each once, the ragged one dropped
    for rank in ranks:
        assert rank["stopped"] + rank["resumed"] == rank["straight"]
        assert rank["straight"][2] not in rank["straight"][:2]  # the next epoch, in its own order
