"""`make gpu-check` (benchmarks/gpu_check.py): its CPU smoke run end to end, and the verdicts it gives.

The CUDA path cannot run here; `--device cpu --tiny` runs the same sections with tiny sizes (gloo in
place of NCCL, torch.compile through aot_eager), so what is checked is the whole script: its processes,
its budget, its JSON document and the verdicts in it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402  (benchmarks/ is not a package)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "gpu_check.py", *args], cwd=BENCHMARKS, env=env, capture_output=True,
                          text=True, timeout=900)


def test_tiny_cpu_run_writes_one_json_document_with_every_section(tmp_path):
    out = tmp_path / "check.json"
    proc = _run("--device", "cpu", "--tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    assert report["passed"] is True and report["machine"]["device"] == "cpu"
    assert list(report["sections"]) == ["stage1_bf16_vs_fp32", "stage2_compile", "ddp", "sampling"]

    stage1 = report["sections"]["stage1_bf16_vs_fp32"]
    if stage1["status"] == "skipped":  # a CPU without native bf16
        assert "bf16" in stage1["reason"]
    else:
        assert stage1["status"] == "pass" and stage1["max_rel_diff"] <= stage1["tolerance"]["max_rel_diff"]

    stage2 = report["sections"]["stage2_compile"]
    assert stage2["status"] == "pass" and stage2["settings"]["compile_backend"] == "aot_eager"
    for run in ("eager", "compiled"):
        assert len(stage2[run]["loss"]) == 3 and all(math.isfinite(x) for x in stage2[run]["loss"])
        assert stage2[run]["ms_per_step"] > 0
    assert stage2["max_rel_diff"] <= stage2["tolerance"]["max_rel_diff"]

    ddp = report["sections"]["ddp"]
    assert (ddp["status"], ddp["backend"], ddp["world_size"]) == ("pass", "gloo", 2)
    assert ddp["rank0"]["sum_ok"] and len(ddp["rank0"]["nll_loss"]) == 2

    sampling = report["sections"]["sampling"]
    runs = sampling["runs"]
    assert sampling["status"] == "pass"
    reference = runs["reference (taming: stride 1, whole window per token)"]
    assert reference["extrapolated"] and reference["tokens_timed"] == 8 and reference["speedup_vs_reference"] == 1
    assert {f"stride {k}" for k in (1, 2, 4)} <= set(runs)
    assert all(run["seconds"] > 0 and "sampling_peak_rss_mb" in run for run in runs.values() if "skipped" not in run)


def test_refuses_to_overwrite_without_force_before_any_work(tmp_path):
    out = tmp_path / "check.json"
    out.write_text("{}")
    proc = _run("--device", "cpu", "--tiny", "--out", str(out))
    assert proc.returncode == 2 and "already exists; pass --force" in proc.stderr
    assert out.read_text() == "{}"


@pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_what_to_run_instead():
    proc = _run("--out", "unused.json")
    assert proc.returncode == 2 and "--device cpu --tiny" in proc.stderr


def _runs(a: list[float], b: list[float], finite: bool = True) -> dict:
    return {"fp32": {"nll_loss": a, "all_finite": True}, "bf16": {"nll_loss": b, "all_finite": finite}}


def test_verdict_passes_within_the_tolerance_and_fails_beyond_it_or_on_non_finite_losses():
    verdict = gpu_check._verdict
    assert verdict(_runs([1.0, 0.9], [1.01, 0.92]), "fp32", "bf16", "nll_loss", 0.05)["status"] == "pass"
    failed = verdict(_runs([1.0, 0.9], [1.0, 1.0]), "fp32", "bf16", "nll_loss", 0.05)
    assert failed["status"] == "fail" and failed["max_rel_diff"] == pytest.approx(0.1111, abs=1e-4)
    assert verdict(_runs([1.0], [1.0], finite=False), "fp32", "bf16", "nll_loss", 0.05)["status"] == "fail"
    crashed = {"fp32": {"error": "RuntimeError: boom"}, "bf16": {"nll_loss": [1.0], "all_finite": True}}
    assert verdict(crashed, "fp32", "bf16", "nll_loss", 0.05)["errors"] == ["fp32: RuntimeError: boom"]


def test_a_process_that_fails_or_overruns_is_recorded_and_the_others_still_report():
    from harness import guarded, guarded_many

    assert "ValueError: no such size" in guarded(1, 60, _fail, "no such size")["error"]
    slow, fast = guarded_many(1, 20, _sleep, [(60,), (0,)])
    assert "no result within 20 s" in slow["error"] and fast["slept"] == 0


def _fail(message: str) -> dict:
    raise ValueError(message)


def _sleep(seconds: float) -> dict:
    import time

    time.sleep(seconds)
    return {"slept": seconds}
