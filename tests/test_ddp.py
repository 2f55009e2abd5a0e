"""DDP on CPU (gloo, 2 processes) matches one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from vqtoolkit.checkpoint import load_bundle, load_train_state
from vqtoolkit.recipes import load_recipe
from vqtoolkit.train.stage1 import train_stage1

from .conftest import logged, write
from .test_train_stage1 import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, recipe_path: str, out: str, overrides: list,
               resume: bool = False) -> None:
    """What torchrun would run on one rank: its environment, then the training entry point."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        train_stage1(load_recipe(recipe_path, overrides), out, resume=resume, device="cpu")
        # Both ranks are done with every collective before either closes its gloo connections: a rank
        # that tears them down early can abort the other's gloo threads (SIGABRT, seen in CI).
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _dump_rank_state(rank: int, world: int, port: int, recipe_path: str, out: str, overrides: list) -> None:
    """Train, then write this rank's quantizer codebook (ranks must agree)."""
    import vqtoolkit.train.stage1 as stage1

    captured = {}
    original = stage1.Stage1Model.build

    def build(*args, **kwargs):
        model = original(*args, **kwargs)
        captured["model"] = model
        return model

    stage1.Stage1Model.build = build
    _rank_main(rank, world, port, recipe_path, out, overrides)
    state = {k: v.contiguous() for k, v in captured["model"].vqgan.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))


def _agree_main(rank: int, world: int, port: int, out: str) -> None:
    """One rank of the loop's agreements: a signal or a non-finite loss on one rank stops them all."""
    import json

    from vqtoolkit.distributed import max_over_ranks
    from vqtoolkit.train.loop import NonFiniteLoss, StopSignals, _window_means, check_finite
    from vqtoolkit.train.runtime import Runtime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rt = Runtime(torch.device("cpu"), rank, world)
        signals = StopSignals()
        signals.received = "SIGTERM" if rank == 1 else None
        try:
            check_finite(torch.tensor(float("nan") if rank == 0 else 1.0), rt)
            raised = False
        except NonFiniteLoss:
            raised = True
        result = {"stop": signals.should_stop(rt), "raised": raised,
                  "max": max_over_ranks(torch.tensor([rank, -rank])).tolist(),
                  "means": _window_means([{"a": rank}, {"a": rank + 2.0}], rt)}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_stopping_and_on_logged_means(tmp_path):
    import json

    mp.start_processes(_agree_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # window means 1 (rank 0: 0 and 2) and 2 (rank 1: 1 and 3); their mean over ranks is 1.5
        assert result == {"stop": True, "raised": True, "max": [1, 0], "means": {"a": 1.5}}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_process_gloo_matches_single_process(tmp_path, accumulate):
    recipe = write(tmp_path / "tiny.toml", TINY)
    # ch 64: with one channel per GroupNorm group a conv bias before the norm has zero gradient,
    # and Adam would amplify float noise in it into differences of order lr.
    # A small lr: vector quantization is discontinuous (a near-tie can flip a code), so large steps
    # would amplify float-level differences between the runs into different code assignments.
    common = ["model.ch=64", "train.base_learning_rate=1e-6", "loss.disc_start=100", "train.max_steps=3", "train.sample_every=100", "train.channels_last=false",
              f"train.accumulate={accumulate}"]
    single = tmp_path / "single"
    train_stage1(load_recipe(recipe, common + ["train.batch_size=4"]), single, device="cpu")

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    mp.start_processes(_dump_rank_state, args=(2, _free_port(), str(recipe), str(ddp),
                                               common + ["train.batch_size=2"]),
                       nprocs=2, start_method="spawn")
    a = load_bundle(single / "last.safetensors").namespace("vqgan")
    b = load_bundle(ddp / "last.safetensors").namespace("vqgan")
    assert a.keys() == b.keys()
    diffs = torch.cat([(b[k].double() - a[k].double()).abs().flatten() for k in a if a[k].is_floating_point()])
    # Adam moves each weight by about lr per step whatever the gradient's size, so float noise in
    # near-zero gradients (summation order differs across processes) shows up in a handful of weights.
    lr = 1e-6 * 4 * accumulate  # base_learning_rate x global batch x accumulate
    assert diffs.max() <= 3 * lr
    assert diffs.mean() < 1e-3 * lr
    from safetensors.torch import load_file

    r0, r1 = load_file(str(ddp / "rank0.safetensors")), load_file(str(ddp / "rank1.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"


def test_resume_on_another_world_size(tmp_path):
    """One process trains 2 steps; two processes resume it to 3: as one process doing 3 steps."""
    recipe = write(tmp_path / "tiny.toml", TINY)
    common = ["model.ch=64", "train.base_learning_rate=1e-6", "loss.disc_start=100", "train.sample_every=100",
              "train.channels_last=false", "train.checkpoint_every=1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_stage1(load_recipe(recipe, common + ["train.batch_size=4", "train.max_steps=3"]), straight, device="cpu")
    train_stage1(load_recipe(recipe, common + ["train.batch_size=4", "train.max_steps=2"]), split, device="cpu")
    mp.start_processes(_rank_main, args=(2, _free_port(), str(recipe), str(split),
                                         common + ["train.batch_size=2", "train.max_steps=3"], True),
                       nprocs=2, start_method="spawn")
    a = load_bundle(straight / "last.safetensors").namespace("vqgan")
    b = load_bundle(split / "last.safetensors").namespace("vqgan")
    diffs = torch.cat([(b[k].double() - a[k].double()).abs().flatten() for k in a if a[k].is_floating_point()])
    lr = 1e-6 * 4
    assert diffs.max() <= 3 * lr and diffs.mean() < 1e-3 * lr



@pytest.mark.parametrize("accumulate, channels_last", [(1, "false"), (2, "false"), (1, "true")])
def test_gan_phase_matches_single_process(tmp_path, accumulate, channels_last):
    """With the discriminator on, the adaptive weight comes from the global batch's gradients."""
    recipe = write(tmp_path / "tiny.toml", TINY)
    common = ["model.ch=64", "train.base_learning_rate=1e-6", "loss.disc_start=0", "train.max_steps=3",
              "train.sample_every=100", f"train.channels_last={channels_last}", f"train.accumulate={accumulate}"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train_stage1(load_recipe(recipe, common + ["train.batch_size=4"]), single, device="cpu")
    mp.start_processes(_rank_main, args=(2, _free_port(), str(recipe), str(ddp), common + ["train.batch_size=2"]),
                       nprocs=2, start_method="spawn")
    one, two = (logged(run, "d_weight", "disc_loss") for run in (single, ddp))
    assert len(one) == 3 and one[-1][1] > 0
    assert sum(two, ()) == pytest.approx(sum(one, ()), rel=1e-4)
    lr = 1e-6 * 4 * accumulate
    a, b = (load_train_state(run / "state.safetensors")["modules"] for run in (single, ddp))
    diffs = torch.cat([(b["vqgan"][k].double() - v.double()).abs().flatten()
                       for k, v in a["vqgan"].items() if v.is_floating_point()])
    assert diffs.max() <= 3 * lr and diffs.mean() < 1e-3 * lr
    for k, v in a["discriminator"].items():  # ActNorm scales of ~200 from the (all-reduced) first batch
        torch.testing.assert_close(b["discriminator"][k], v, rtol=1e-4, atol=3 * lr)
