"""Tokenize throughput: `vqt tokenize`'s code path over a folder of PNG images, by data-loader workers.

Prints one JSON object. Writes `--images` 256x256 PNG scenes to a temporary folder, saves a
random-weight stage-1 bundle of the paper's f16 architecture at `--ch` (ch_mult 1,1,2,2,4, 2 res
blocks, attention at 16, z 256, 1024 codes) and runs `tokenize_recipe` (PNG decoding, resizing,
encoding, shard writing) with 0 and 1 worker processes, batch 16. "encode only" times the same
model on the same images already in memory: the ceiling that data loading is measured against.
Each figure runs in its own process; peak_rss_mb is that process's maximum RSS.

    python benchmarks/tokenize_speed.py [--images 64] [--ch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from harness import F16_ARCH, isolated

BATCH = 16


def _write_inputs(folder: Path, n: int, ch: int) -> None:
    from vqtoolkit.api import Stage1Model
    from vqtoolkit.images import save_png
    from vqtoolkit.recipes import ModelConfig, QuantizerConfig
    from vqtoolkit_plugins.synthetic.render import render_scene

    (folder / "images").mkdir()
    for i in range(n):
        save_png(render_scene(i, 256).image, folder / "images" / f"{i:05d}.png")
    torch.manual_seed(0)
    model = Stage1Model.build(ModelConfig(ch=ch, **F16_ARCH), QuantizerConfig(embed_dim=256, options={"n_codes": 1024}))
    model.save(folder / "stage1.safetensors")


def tokenize_run(folder: str, workers: int) -> dict:
    from vqtoolkit.recipes import recipe_from_dict
    from vqtoolkit.train.tokenize import tokenize_recipe

    recipe = recipe_from_dict({"data": {"source": "folder", "root": f"{folder}/images", "size": 256,
                                        "num_workers": workers}})
    out = Path(folder) / f"tokens-{workers}"
    start = time.perf_counter()
    manifest = tokenize_recipe(recipe, out, model_path=f"{folder}/stage1.safetensors", batch_size=BATCH)
    seconds = time.perf_counter() - start
    return {"images": manifest["count"], "seconds": round(seconds, 1),
            "images_per_second": round(manifest["count"] / seconds, 2)}


def encode_only(folder: str) -> dict:
    from vqtoolkit.api import Stage1Model
    from vqtoolkit.data import ImageFolder

    model = Stage1Model.load(f"{folder}/stage1.safetensors")
    dataset = ImageFolder(f"{folder}/images", 256, train=False)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # (N, 3, 256, 256)
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        model.encode(images[i : i + BATCH])
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": round(seconds, 1), "images_per_second": round(len(images) / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--ch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _write_inputs(Path(tmp), args.images, args.ch)
        result = {"images": args.images, "size": 256, "batch_size": BATCH, "ch": args.ch, "threads": args.threads,
                  "encode_only": isolated(args.threads, encode_only, tmp)}
        for workers in (0, 1):
            result[f"tokenize_{workers}_workers"] = isolated(args.threads, tokenize_run, tmp, workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
