"""The GPU check (`make gpu-check`): does vqtoolkit train and sample correctly on this machine's GPUs, and how fast.

Prints one JSON document and writes it atomically to --out. Four sections, each in its own processes
and each recording its status ("pass", "fail", "skipped" or "error"), figures, tolerances and errors
without stopping the others:

- stage1_bf16_vs_fp32: `train_stage1` (the real loop, GAN on from step 0) from the same init on the same
  batches in fp32 and under bf16 autocast: every logged loss finite, the per-step nll (L1 + LPIPS)
  of the two within a relative tolerance, ms per step (median after the first) and peak memory.
- stage2_compile: `train_stage2` with `train.compile = true` and without, same init: finite losses,
  within a tolerance of each other, the first step's seconds (the compile) and ms per step after it.
- ddp: `train_stage1` under DDP on every GPU (NCCL), then an all_reduce check and its bus bandwidth.
  With one GPU DDP is skipped (it says so) and a one-process NCCL group checks the backend. On CPU the
  same code runs 2 gloo processes.
- sampling: the paper's transformer (24 layers, 1024 wide, 16 heads, random weights, fp32) on a
  1024x576 image at f16 (36x64 codes, window 16x16, 256 condition tokens): the reference code's loop
  (timed over its first tokens and extrapolated: each of its tokens costs the same forward),
  vqtoolkit's sliding window at strides 1, 4, 8, 16 and the local transformer's rolling-cache sampler
  (when this tree has it), each whole image timed, with peak memory; then the local sampler at
  2048x2048 (128x128 codes), whose memory should grow with the width only.

Time budget: `--budget` seconds (default 420) for everything, and a cap per process; a process still
running at its cap is stopped and recorded as an error, and a section that finds no time left is
skipped, so the command ends in under 8 minutes. Estimated for one H200 (not yet measured on one): ~15
processes at ~8 s to start (torch import, CUDA context); stage 1 at ch 128, 256 px, batch 8: ~0.2 s a
step, 2 x 20 steps; the compile of an 8-layer GPT ~30-60 s; sampling is bound by kernel launches,
~5 ms per 24-layer forward, ~2304 forwards per image and stride: ~15 s per sampler. About 4-5 minutes.

    python benchmarks/gpu_check.py [--out runs/gpu-check.json] [--force] [--budget 420]
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check.json   # the CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import torch

from harness import guarded, guarded_many
from samplers import Setup, local, sliding
from vqtoolkit.errors import VqtError
from vqtoolkit.fileio import atomic_write_text, check_new


@dataclass(frozen=True)
class Sizes:
    """What each section trains and samples; FULL on a GPU, TINY for the CPU smoke run."""

    vqgan: dict  # ModelConfig keys
    n_codes: int
    image: int  # stage-1 crop size (px)
    batch: int
    steps: int
    gpt: dict  # n_layer, n_head, n_embd of the stage-2 compile check
    window: int  # stage-2 training window (codes)
    ddp_steps: int
    allreduce_mb: int
    sampling: Setup
    reference_tokens: int  # the reference sampler is timed over this many tokens
    strides: tuple[int, ...]
    large_grid: tuple[int, int]  # the local sampler also samples this grid: its memory grows with the width only
    workers: int  # data loader processes
    cap_s: float  # the most one process may take
    disc_ndf: int = 64  # the discriminator's width
    perceptual_weight: float = 1.0  # 0: no LPIPS (its VGG alone takes seconds to build on a CPU)
    compile_backend: str = "inductor"


FULL = Sizes(vqgan=dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=256,
                        resolution=256),
             n_codes=1024, image=256, batch=8, steps=20, gpt=dict(n_layer=8, n_head=8, n_embd=512), window=16,
             ddp_steps=10, allreduce_mb=256,
             sampling=Setup(n_layer=24, n_head=16, n_embd=1024, device="cuda"), reference_tokens=256,
             strides=(1, 4, 8, 16), large_grid=(128, 128), workers=2, cap_s=150)
# aot_eager: dynamo and AOT autograd trace the model as under inductor, without inductor's C++ builds
TINY = Sizes(vqgan=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=32,
                        norm_groups=8),
             n_codes=32, image=32, batch=2, steps=3, gpt=dict(n_layer=1, n_head=2, n_embd=32), window=4,
             ddp_steps=2, allreduce_mb=1,
             sampling=Setup(n_layer=1, n_head=2, n_embd=32, vocab_size=64, grid=(6, 8), window=(4, 4), prefix=16),
             reference_tokens=8, strides=(1, 2, 4), large_grid=(12, 16), workers=0, cap_s=120, disc_ndf=8,
             perceptual_weight=0.0, compile_backend="aot_eager")

STAGE1_RTOL = 0.05  # bf16 keeps 8 mantissa bits (0.4 % per rounding); a few Adam steps let the runs drift apart
STAGE2_RTOL = 0.02  # the same arithmetic in fused kernels: only rounding order differs


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def timeout(self, cap: float) -> float:
        """Seconds the next process may take; 0 when too little is left to start one."""
        left = self.deadline - time.monotonic()
        return min(cap, left) if left > 10 else 0.0


def _synthetic_data(parse_data, size: int, workers: int):
    """64 synthetic scenes of `size` pixels, none held out: enough batches for a few timed steps."""
    return parse_data({"source": "synthetic", "size": size, "n": 64, "val_n": 0, "num_workers": workers}, "gpu_check")


def _stage1_recipe(s: Sizes, precision: str, steps: int, device: str):
    from vqtoolkit.recipes import LossConfig, ModelConfig, QuantizerConfig, Recipe, TrainConfig
    from vqtoolkit.source_options import parse_data

    return Recipe(data=_synthetic_data(parse_data, s.image, s.workers),
                  model=ModelConfig(**s.vqgan), quantizer=QuantizerConfig(options={"n_codes": s.n_codes}),
                  loss=LossConfig(perceptual_backbone="random", perceptual_weight=s.perceptual_weight, disc_start=0,
                                    disc_ndf=s.disc_ndf),
                  train=TrainConfig(max_steps=steps, batch_size=s.batch, precision=precision, device=device,
                                    checkpoint_every=10_000, sample_every=10_000, log_every=10_000))


class Steps:
    """The training loop's progress callback: each step's time stamp and logs."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.logs: list[dict[str, float]] = []

    def __call__(self, step: int, total: int, logs: dict[str, float]) -> None:
        _sync()
        self.stamps.append(time.perf_counter())
        self.logs.append({k: float(v) for k, v in logs.items()})

    def figures(self, started: float, key: str) -> dict:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return {"first_step_s": round(self.stamps[0] - started, 2),
                "ms_per_step": round(1000 * statistics.median(gaps), 1) if gaps else None,
                key: [round(log[key], 5) for log in self.logs],
                "all_finite": all(math.isfinite(v) for log in self.logs for v in log.values())}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _peak(device: str) -> dict:
    return {"peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if device == "cuda" else {}


def stage1_run(s: Sizes, precision: str, device: str) -> dict:
    from vqtoolkit.train.stage1 import train_stage1

    steps = Steps()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_stage1(_stage1_recipe(s, precision, s.steps, device), out, progress=steps)
    return {**steps.figures(started, "nll_loss"), **_peak(device)}


def stage1_section(s: Sizes, device: str, budget: Budget) -> dict:
    from vqtoolkit.train.runtime import cpu_has_bf16

    settings = {**s.vqgan, "image": s.image, "batch": s.batch, "steps": s.steps, "gan": "on from step 0",
                "perceptual_weight": s.perceptual_weight, "compared": "nll_loss per step"}
    result: dict = {"settings": settings, "tolerance": {"max_rel_diff": STAGE1_RTOL}}
    if device == "cpu" and not cpu_has_bf16():
        return {**result, "status": "skipped", "reason": "this CPU has no native bf16 arithmetic"}
    for precision in ("fp32", "bf16"):
        result[precision] = _bounded(budget, s.cap_s, device, stage1_run, s, precision, device)
    return _verdict(result, "fp32", "bf16", "nll_loss", STAGE1_RTOL)


def _verdict(result: dict, a: str, b: str, key: str, rtol: float) -> dict:
    """Both runs finite and within `rtol` of each other, step by step, in `key`."""
    skipped = [f"{side}: {result[side]['skipped']}" for side in (a, b) if "skipped" in result[side]]
    if skipped:
        return {**result, "status": "skipped", "reason": "; ".join(skipped)}
    errors = [f"{side}: {result[side]['error']}" for side in (a, b) if "error" in result[side]]
    if errors:
        return {**result, "status": "error", "errors": errors}
    pairs = list(zip(result[a][key], result[b][key]))
    diff = max(abs(x - y) / max(abs(x), 1e-8) for x, y in pairs)
    finite = result[a]["all_finite"] and result[b]["all_finite"]
    result["max_rel_diff"] = round(diff, 5)
    ok = finite and diff <= rtol
    return {**result, "status": "pass" if ok else "fail",
            **({} if ok else {"errors": [f"finite: {finite}, max relative difference {diff:.4f} (tolerance {rtol})"]})}


def stage2_run(s: Sizes, compile_: bool, device: str) -> dict:
    from vqtoolkit.api import Stage1Model
    from vqtoolkit.recipes import ModelConfig, QuantizerConfig, Recipe, SampleConfig, TrainConfig, TransformerConfig
    from vqtoolkit.source_options import parse_data
    from vqtoolkit.train.stage2 import train_stage2

    if compile_ and s.compile_backend != "inductor":
        real = torch.compile
        torch.compile = lambda fn, **kw: real(fn, **{**kw, "backend": s.compile_backend})
    model = ModelConfig(**{**s.vqgan, "ch": 32})  # the stage-1 model only encodes the training crops
    torch.manual_seed(0)
    steps = Steps()
    with tempfile.TemporaryDirectory() as out:
        Stage1Model.build(model, QuantizerConfig(options={"n_codes": s.n_codes})).save(f"{out}/first.safetensors")
        recipe = Recipe(data=_synthetic_data(parse_data, s.window * model.factor, s.workers),
                        transformer=TransformerConfig(first_stage=f"{out}/first.safetensors", window=s.window, **s.gpt),
                        train=TrainConfig(max_steps=s.steps, batch_size=s.batch, compile=compile_, device=device,
                                          checkpoint_every=10_000, sample_every=10_000, log_every=10_000),
                        sample=SampleConfig(n=1))
        started = time.perf_counter()
        train_stage2(recipe, f"{out}/run", progress=steps)
    return {**steps.figures(started, "loss"), **_peak(device)}


def stage2_section(s: Sizes, device: str, budget: Budget) -> dict:
    result: dict = {"settings": {**s.gpt, "window": s.window, "batch": s.batch, "steps": s.steps,
                                 "precision": "auto (bf16 autocast on CUDA, fp32 on CPU)",
                                 "compile_backend": s.compile_backend},
                    "tolerance": {"max_rel_diff": STAGE2_RTOL}}
    for name, flag in (("eager", False), ("compiled", True)):
        result[name] = _bounded(budget, s.cap_s, device, stage2_run, s, flag, device)
    return _verdict(result, "eager", "compiled", "loss", STAGE2_RTOL)


def ddp_rank(rank: int, world: int, port: int, s: Sizes, device: str) -> dict:
    """One rank: a short `train_stage1` under DDP (the process group as torchrun would set it up), then
    an all_reduce whose sum is known, and the all_reduce bus bandwidth."""
    import os

    import torch.distributed as dist

    from vqtoolkit.train.stage1 import train_stage1

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    steps = Steps()
    with tempfile.TemporaryDirectory() as out:  # each rank its own folder: only rank 0 would write
        started = time.perf_counter()
        train_stage1(_stage1_recipe(s, "auto", s.ddp_steps, device), out, progress=steps)
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    total = torch.full((1,), float(rank + 1), device=dev)
    dist.all_reduce(total)
    buffer = torch.ones(s.allreduce_mb * 2**18, device=dev)  # fp32: 4 bytes each
    dist.all_reduce(buffer)  # warm-up
    _sync()
    start = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(buffer)
    _sync()
    seconds = (time.perf_counter() - start) / 5
    dist.destroy_process_group()
    figures = {"rank": rank, "sum_ok": float(total) == world * (world + 1) / 2,
               "allreduce_bus_gb_s": round(2 * (world - 1) / world * buffer.nbytes / seconds / 1e9, 1)}
    return {**figures, **(steps.figures(started, "nll_loss") if rank == 0 else {})}


def nccl_one_process(port: int) -> dict:
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    total = torch.ones(1, device="cuda")
    dist.all_reduce(total)
    dist.destroy_process_group()
    return {"all_reduce_ok": float(total) == 1.0}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_section(s: Sizes, device: str, budget: Budget) -> dict:
    world = torch.cuda.device_count() if device == "cuda" else 2
    result: dict = {"backend": "nccl" if device == "cuda" else "gloo", "world_size": world,
                    "settings": {"steps": s.ddp_steps, "batch_per_rank": s.batch, "allreduce_mb": s.allreduce_mb}}
    if world < 2:
        check = _bounded(budget, 60, device, nccl_one_process, _free_port())
        return {**result, "status": "error" if "error" in check else "skipped",
                "reason": "one GPU: DDP needs at least 2", "nccl_one_process": check}
    port = _free_port()
    timeout = budget.timeout(s.cap_s)
    if not timeout:
        return {**result, "status": "skipped", "reason": "out of the time budget"}
    ranks = guarded_many(_threads(device), timeout, ddp_rank, [(rank, world, port, s, device) for rank in range(world)])
    return _ddp_verdict(result, ranks)


def _ddp_verdict(result: dict, ranks: list[dict]) -> dict:
    errors = [f"rank {i}: {r['error']}" for i, r in enumerate(ranks) if "error" in r]
    if errors:
        return {**result, "status": "error", "errors": errors}
    ok = all(r["sum_ok"] for r in ranks) and ranks[0]["all_finite"]
    return {**result, "status": "pass" if ok else "fail", "rank0": ranks[0],
            "allreduce_bus_gb_s": [r["allreduce_bus_gb_s"] for r in ranks]}


LOCAL = "local transformer (rolling cache)"


def sampling_section(s: Sizes, device: str, budget: Budget) -> dict:
    """The image's samplers side by side (speed-ups against the reference), then the local sampler on
    `large_grid` (its memory beside the image's)."""
    setup = replace(s.sampling, device=device)
    reference_name = "reference (taming: stride 1, whole window per token)"
    plan = [(reference_name, sliding, (setup, None, s.reference_tokens))]
    plan += [(f"stride {k}", sliding, (setup, k)) for k in s.strides]
    has_local = importlib.util.find_spec("vqtoolkit.sampling_local") is not None
    if has_local:
        plan.append((LOCAL, local, (setup,)))
    runs = {name: _bounded(budget, s.cap_s, device, fn, *args) for name, fn, args in plan}
    reference = runs[reference_name].get("seconds")
    for run in runs.values():
        if reference and "seconds" in run:
            run["speedup_vs_reference"] = round(reference / run["seconds"], 2)
    large = {"grid": list(s.large_grid)}
    if has_local:
        large.update(_bounded(budget, s.cap_s, device, local, replace(setup, grid=s.large_grid)))
    else:
        runs[LOCAL] = large = {"skipped": "not in this tree (vqtoolkit.sampling_local is missing)"}
    errors = [f"{name}: {run['error']}" for name, run in {**runs, "local, large grid": large}.items() if "error" in run]
    return {"status": "error" if errors else "pass", "setup": {**setup.describe(), "precision": "fp32"},
            "runs": runs, "local_large_grid": large, **({"errors": errors} if errors else {})}


def _bounded(budget: Budget, cap: float, device: str, fn, *args) -> dict:
    """`fn(*args)` in its own process for at most `cap` seconds of what is left of the budget."""
    timeout = budget.timeout(cap)
    if not timeout:
        return {"skipped": "out of the time budget"}
    return guarded(_threads(device), timeout, fn, *args)


def _threads(device: str) -> int:
    """Torch threads per process: one on CPU (the smoke run shares its cores); on a GPU a few feed it."""
    return 1 if device == "cpu" else 4


SECTIONS = {"stage1_bf16_vs_fp32": stage1_section, "stage2_compile": stage2_section, "ddp": ddp_section,
            "sampling": sampling_section}


def _machine(device: str) -> dict:
    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device == "cuda":
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info.update(cuda=torch.version.cuda, gpus=gpus)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check.json", help="where the JSON document is written")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU smoke run, seconds")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all sections together")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available; use --device cpu --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    try:
        check_new(args.out, args.force)  # before minutes of work, not after
    except VqtError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else FULL
    budget, started = Budget(args.budget), time.monotonic()
    report: dict = {"command": " ".join(["python"] + sys.argv),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": _machine(args.device), "budget_s": args.budget, "sections": {}}
    for name, section in SECTIONS.items():
        try:
            report["sections"][name] = section(sizes, args.device, budget)
        except Exception as exc:  # a section's own bookkeeping failed: record it, run the others
            report["sections"][name] = {"status": "error", "errors": [f"{type(exc).__name__}: {exc}"]}
        print(f"gpu_check: {name}: {report['sections'][name]['status']} "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["passed"] = all(section["status"] in ("pass", "skipped") for section in report["sections"].values())
    text = json.dumps(report, indent=2)
    print(text)
    try:
        atomic_write_text(args.out, text + "\n", force=args.force)
    except VqtError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
