import json

import pytest
import torch
from safetensors.torch import save_file

from vqtoolkit import checkpoint
from vqtoolkit.checkpoint import (load_bundle, load_state, load_train_state, save_bundle,
                                  save_train_state)
from vqtoolkit.errors import CheckpointError, VqtError


def test_bundle_round_trip(tmp_path):
    tensors = {"vqgan.w": torch.randn(3, 4), "vqgan.b": torch.arange(5), "transformer.x": torch.ones(2)}
    config = {"model": {"ch": 32, "ch_mult": [1, 2]}}
    path = tmp_path / "m.safetensors"
    save_bundle(path, tensors, kind="stage1", config=config, condition={"name": "depth"})
    b = load_bundle(path, expect_kind="stage1")
    assert b.kind == "stage1" and b.config == config and b.condition == {"name": "depth"}
    assert b.tensors.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(b.tensors[k], v) and b.tensors[k].dtype == v.dtype
    assert set(b.namespace("vqgan")) == {"w", "b"}


def test_refuses_overwrite_without_force(tmp_path):
    path = tmp_path / "m.safetensors"
    save_bundle(path, {"a": torch.ones(1)}, kind="stage1", config={})
    with pytest.raises(VqtError, match="already exists; pass --force"):
        save_bundle(path, {"a": torch.zeros(1)}, kind="stage1", config={})
    save_bundle(path, {"a": torch.zeros(1)}, kind="stage1", config={}, force=True)
    assert load_bundle(path).tensors["a"].item() == 0


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_bundle(path, {"a": torch.ones(1)}, kind="stage1", config={})
    before = path.read_bytes()

    def dies(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpoint, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(path, {"a": torch.zeros(1)}, kind="stage1", config={}, force=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_full_disk_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_bundle(path, {"a": torch.ones(1)}, kind="stage1", config={})

    def full(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(VqtError, match="No space left on device; any previous file there is unchanged"):
        save_bundle(path, {"a": torch.zeros(1)}, kind="stage1", config={}, force=True)
    assert load_bundle(path).tensors["a"].item() == 1


def test_wrong_kind_and_foreign_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_bundle(path, {"a": torch.ones(1)}, kind="stage1", config={})
    with pytest.raises(CheckpointError, match="is a stage1 bundle; this command needs a stage-2"):
        load_bundle(path, expect_kind="stage2")
    foreign = tmp_path / "f.safetensors"
    save_file({"a": torch.ones(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a vqtoolkit bundle"):
        load_bundle(foreign)
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_bundle(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")


def test_newer_format_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1)}, str(path), metadata={"format": "vqtoolkit/9", "format_version": "9",
                                                          "kind": "stage1", "config": json.dumps({})})
    with pytest.raises(CheckpointError, match="format version 9, newer"):
        load_bundle(path)


def test_load_state_names_problems():
    module = torch.nn.Linear(3, 2)
    bad = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"missing: bias; unexpected: extra; wrong shape: weight \(2, 4\) \(expected \(2, 3\)\)"):
        load_state(module, bad, "m.safetensors")


def test_train_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "opt": opt.state_dict(), "rng": [torch.get_rng_state()], "nested": (1, "a", None)}
    save_train_state(tmp_path / "s.safetensors", state)
    back = load_train_state(tmp_path / "s.safetensors")
    assert back["step"] == 7 and back["nested"] == (1, "a", None)
    opt2 = torch.optim.Adam(model.parameters())
    opt2.load_state_dict(back["opt"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)
    assert torch.equal(back["rng"][0], torch.get_rng_state())


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "m.safetensors"
    save_bundle(path, {"a": torch.ones(1)}, kind="stage1", config={})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
