"""Shared fixtures: isolated plugin loading and tiny recipes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vqtoolkit import plugins

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts with no plugins loaded and with VQT_LOAD_PLUGINS unset."""
    monkeypatch.delenv("VQT_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def write_plugin(site: Path, name: str, source: str, version: str = "1.0") -> str:
    """A throwaway plugin distribution in folder `site`: module vqt_test_<name> plus a dist-info
    whose entry point names it; importlib.metadata finds it on sys.path as it finds a pip install."""
    site.mkdir(parents=True, exist_ok=True)
    module = f"vqt_test_{name}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = site / f"vqt_test_{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vqt-test-{name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[vqtoolkit]\n{name} = {module}\n")
    return module


def install_example(example: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An example of examples/ as pip installs it: its folder on sys.path and a dist-info whose
    entry_points.txt is written from its own pyproject.toml (so a broken entry point fails a test).
    Returns the pyproject's [project] table."""
    import tomllib

    project = tomllib.loads((example / "pyproject.toml").read_text())["project"]
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["vqtoolkit"].items())
    (dist / "entry_points.txt").write_text(f"[vqtoolkit]\n{entry_points}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(example))
    plugins.reset()
    return project


def forget_plugin_modules() -> None:
    for mod in [m for m in sys.modules if m.startswith("vqt_test_")]:
        del sys.modules[mod]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    their ops run ~5x faster so on 2 shared cores than with 2 threads, which wait on each other whenever
    another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a throwaway plugin distribution (see `write_plugin`) for one test."""

    def install(name: str, source: str, version: str = "1.0") -> str:
        site = tmp_path / f"site_{name}"
        module = write_plugin(site, name, source, version)
        monkeypatch.syspath_prepend(str(site))
        plugins.reset()
        return module

    yield install
    forget_plugin_modules()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fast_compile(monkeypatch):
    """torch.compile through dynamo and AOT autograd with eager kernels: it checks that a model
    traces and differentiates under compile without paying for inductor's C++ builds. Yields the
    list of what was compiled."""
    real, compiled = torch.compile, []

    def compile_(fn, *args, **kwargs):
        compiled.append(fn)
        return real(fn, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    yield compiled
    torch._dynamo.reset()


TINY_STAGE2 = """
[data]
source = "synthetic"
size = 32
n = 16
val_n = 2
num_workers = 0

[transformer]
first_stage = "{first}"
n_layer = 1
n_head = 2
n_embd = 32
window = 4
{transformer}
[train]
max_steps = 3
batch_size = 4
base_learning_rate = 1e-4
checkpoint_every = 3
sample_every = 3
log_every = 1

[sample]
n = 2
"""


@pytest.fixture(scope="session")
def tiny_stage2():
    """Writes the tiny stage-2 recipe (one layer, 4x4 window, 3 steps on 32 px synthetic images) over a
    first-stage bundle: ``tiny_stage2(path, first_stage, attention="local", ...)``; keyword arguments
    are added to its [transformer] table. Session-scoped so module fixtures can train with it."""
    import json

    def make(path: Path, first_stage: Path, **transformer) -> Path:
        keys = "".join(f"{key} = {json.dumps(value)}\n" for key, value in transformer.items())
        return write(path, TINY_STAGE2.format(first=first_stage, transformer=keys))

    return make


def logged(run_folder: Path, *keys: str) -> list[tuple]:
    """(step, *values) of every metrics.jsonl record that has all `keys`."""
    import json

    records = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], *(r[k] for k in keys)) for r in records if all(k in r for k in keys)]
