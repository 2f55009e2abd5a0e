"""Sampling speed and memory on CPU: raster with vs without KV cache; a 1024x576 image by sampler.

Prints one JSON object. Model: 8 layers, 512 wide, 8 heads, vocab 1024, block 512, random weights,
`--threads` CPU threads. "Uncached" and "reference" figures run taming's computation: one full forward
per token, with minGPT's attention (explicit scores and mask) in place of SDPA (benchmarks/samplers.py).
Raster figures: each process times three 256-token runs and keeps the median; cached and uncached
processes alternate, `--rounds` times each, and the best of each kind counts.

The sliding figures are whole 1024x576 images at f16 (grid 36x64, window 16x16, 256 condition tokens
per window, as a depth condition gives): the reference (taming's scripts/sample_conditional.py: per
token one forward over the condition and the whole window, 511 tokens), vqtoolkit's `sample_sliding`
at each of `--strides`, and the local transformer's rolling-cache sampler (`transformer.attention =
"local"`, the same width and depth) when this tree has it. Every vqtoolkit run is timed in full,
because the cost per token differs between rows and columns. The reference's tokens all cost the
same forward, so `--reference-tokens N` times its first N tokens and scales to the whole image (it
takes about 30 minutes on one thread otherwise). The local sampler is also timed at 2048x2048
(128x128 codes) for its memory: it should grow with the image's width only. `--quick` times a
384x256 image (grid 16x24, a single window row) and skips the 2048x2048 run, as `--no-large` does.
Each figure is also printed to stderr when it is measured.

Each figure runs in its own process; peak_rss_mb is that process's maximum RSS (model included),
sampling_peak_rss_mb the sampler's own peak above the resident memory it started from.

    python benchmarks/sampling.py [--quick] [--rounds 2] [--threads T] [--reference-tokens N] [--strides 1 2 4 8 16]
                                 [--no-large]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import replace

import torch

from harness import isolated
from samplers import Setup, local, raster, sliding

REFERENCE = "reference (taming: stride 1, whole window per token)"
LOCAL = "local transformer (rolling cache)"


def figure(name: str, threads: int, fn, *args) -> dict:
    """One figure in its own process, also printed to stderr as soon as it is measured, so a run
    stopped part-way still leaves what it measured."""
    result = isolated(threads, fn, *args)
    print(f"sampling.py: {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 384x256 image instead of 1024x576")
    parser.add_argument("--rounds", type=int, default=2, help="alternating raster runs of each kind; the best counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-tokens", type=int, default=None,
                        help="time the reference over its first N tokens and scale to the image (default: all)")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--no-large", action="store_true",
                        help="skip the local sampler's 2048x2048 run (an hour on a loaded 2-core machine)")
    args = parser.parse_args()
    setup = Setup(grid=(16, 24) if args.quick else (36, 64))

    runs: dict[str, list[dict]] = {"cached": [], "uncached": []}
    for _ in range(args.rounds):  # alternating processes; interference only ever slows a run down
        for name in runs:
            runs[name].append(figure(f"raster, {name}", args.threads, raster, setup, name == "cached"))
    rasters: dict = {name: max(found, key=lambda run: run["tokens_per_s"]) for name, found in runs.items()}
    rasters["speedup"] = round(rasters["cached"]["tokens_per_s"] / rasters["uncached"]["tokens_per_s"], 2)

    sliding_runs = {REFERENCE: figure(REFERENCE, args.threads, sliding, setup, None, args.reference_tokens)}
    for stride in args.strides:
        sliding_runs[f"stride {stride}"] = figure(f"stride {stride}", args.threads, sliding, setup, stride)
    has_local = importlib.util.find_spec("vqtoolkit.sampling_local") is not None
    if has_local:
        sliding_runs[LOCAL] = figure(LOCAL, args.threads, local, setup)
    reference = sliding_runs[REFERENCE]["seconds"]
    for run in sliding_runs.values():
        run["speedup_vs_reference"] = round(reference / run["seconds"], 2)
    result = {
        "model": {**setup.describe(), "threads": args.threads, "torch": torch.__version__},
        "raster_256_tokens": rasters,
        "sliding_window": {"image": "384x256" if args.quick else "1024x576", "factor": 16, "runs": sliding_runs},
    }
    if not has_local:
        result["local_transformer"] = "not in this tree (vqtoolkit.sampling_local is missing)"
    elif not (args.quick or args.no_large):
        result["local_2048x2048"] = figure("local, 2048x2048", args.threads, local, replace(setup, grid=(128, 128)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
