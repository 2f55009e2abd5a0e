"""Data-loading throughput: the `webdataset` source against the `folder` source over the same images.

Prints one JSON object. Writes `--images` PNG scenes of `--size` pixels to a temporary folder and the
same files as WebDataset shards (`vqt shard`'s writer, `--per-shard` each), then draws one epoch of
training batches (random crops and flips, batch 16) through the training loop's own data path
(`train/order.batch_stream`: the resumable sampler and a DataLoader) from each source, with 1 and 2
worker processes. Sources alternate and the best of `--rounds` epochs counts (interference only ever
slows a run down); worker start-up is inside each epoch, as in training.

    python benchmarks/shards.py [--images 512] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

BATCH = 16


def _write_inputs(folder: Path, n: int, size: int, per_shard: int) -> str:
    from vqtoolkit.images import save_png
    from vqtoolkit_plugins.shards.writer import folder_entries, pattern, write_shards
    from vqtoolkit_plugins.synthetic.render import render_scene

    for i in range(n):
        save_png(render_scene(i, size).image, folder / "images" / f"{i:05d}.png")
    shards = write_shards(folder_entries(folder / "images", {}), folder / "shards", per_shard=per_shard)
    return pattern(shards)


def epoch_rate(dataset: torch.utils.data.Dataset, workers: int) -> float:
    """Images per second over one epoch of training batches, worker start-up included."""
    from vqtoolkit.train.order import batch_stream
    from vqtoolkit.train.runtime import Runtime

    rt = Runtime(torch.device("cpu"), 0, 1)
    batches = len(dataset) // BATCH
    start = time.perf_counter()
    stream = batch_stream(dataset, BATCH, rt, seed=0, num_workers=workers, batches_done=0)
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return batches * BATCH / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from vqtoolkit.data import ImageFolder
    from vqtoolkit_plugins.shards.reader import ShardDataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        urls = _write_inputs(folder, args.images, args.size, args.per_shard)
        sources = {"folder": ImageFolder(folder / "images", args.size, train=True),
                   "webdataset": ShardDataset(urls, args.size, train=True)}
        for dataset in sources.values():  # warm the page cache for both
            epoch_rate(dataset, 0)
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for workers in (1, 2):
                for name, dataset in sources.items():
                    key = f"{name}, {workers} worker{'s' * (workers > 1)}"
                    best[key] = max(best.get(key, 0.0), epoch_rate(dataset, workers))
    ratios = {f"webdataset / folder, {w} worker{'s' * (w > 1)}":
              round(best[f"webdataset, {w} worker{'s' * (w > 1)}"] / best[f"folder, {w} worker{'s' * (w > 1)}"], 3)
              for w in (1, 2)}
    print(json.dumps({"images": args.images, "size": args.size, "batch": BATCH, "per_shard": args.per_shard,
                      "images_per_s": {k: round(v, 1) for k, v in best.items()}, **ratios}, indent=1))


if __name__ == "__main__":
    main()
