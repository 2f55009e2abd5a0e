"""What `--window-stride` costs in quality: bits per token of sampled codes under the reference window.

Prints one JSON object. For a trained stage-2 bundle, samples `--n` images at `--size` with each
stride and scores every sampled token under the model's own reference (stride 1) sliding-window
conditional, teacher-forced: -log2 p(s_ij | window context of the reference rule). Stride 1 samples
from exactly those conditionals, so larger strides show how far their context (a window not centred
on the target) pulls samples away. Real held-out images encoded by the first stage give a baseline.

    python benchmarks/stride_quality.py runs/quickstart-stage2/last.safetensors [--size 512x288]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from vqtoolkit.api import Stage2Model
from vqtoolkit.cli.options import parse_size
from vqtoolkit.sampling import window_context, window_start


@torch.inference_mode()
def reference_bits(model: Stage2Model, codes: torch.Tensor) -> float:
    """Mean -log2 p of each token of codes (B, H, W) under the stride-1 window rule (uncached)."""
    B, H, W = codes.shape
    w = model.window
    prefix_fn = model.prefix_fn(None, B)
    total = 0.0
    for i in range(H):
        top = window_start(i, H, w)
        for j in range(W):
            left = window_start(j, W, w)
            logits = model.gpt(window_context(prefix_fn(top, left), codes, i, top, left, j, w))[:, -1]  # (B, V)
            total += -F.log_softmax(logits.float(), dim=-1).gather(1, codes[:, i, j, None]).sum().item()
    return total / (B * H * W) / math.log(2)


def real_codes(model: Stage2Model, size: tuple[int, int], n: int) -> torch.Tensor:
    from vqtoolkit.images import to_tensor
    from vqtoolkit_plugins.synthetic.render import render_scene

    images = torch.stack([to_tensor(render_scene(90_000 + k, size).image) for k in range(n)])
    return model.first_stage.encode(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--strides", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Stage2Model.load(args.bundle)
    if model.condition is not None:
        raise SystemExit("this benchmark scores unconditional models")
    size = parse_size(args.size)
    result = {"bundle": args.bundle, "size": args.size, "n": args.n, "window": model.window,
              "real_images_bits_per_token": reference_bits(model, real_codes(model, size, args.n)),
              "strides": {}}
    for stride in (int(s) for s in args.strides.split(",")):
        start = time.perf_counter()
        _, codes = model.sample(args.n, size, seed=0, window_stride=stride)
        seconds = time.perf_counter() - start
        result["strides"][stride] = {"seconds": seconds, "bits_per_token": reference_bits(model, codes)}
    base = result["strides"].get(1)
    if base:
        for figures in result["strides"].values():
            figures["speedup"] = base["seconds"] / figures["seconds"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
