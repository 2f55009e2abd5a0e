"""A third-party plugin author's slips, each made by a throwaway plugin, and their exact outcomes.

The plugin is the one a new author writes from the docs: `grayscale`, the image in grey with one
option (`standard`: "bt601" or "bt709"), encoded by a one-channel VQGAN. Each slip is a small edit
of it. A failing plugin must stay contained (the built-ins keep working, `vqt plugins` names it and
exits 1); options must be stored in full and compared option by option; messages must name the
file, plugin or field at fault and suggest nothing that exists only for built-ins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit import plugins
from vqtoolkit.checkpoint import load_bundle, save_bundle
from vqtoolkit.cli import cli
from vqtoolkit.errors import PluginError
from vqtoolkit.recipes import ModelConfig, QuantizerConfig
from vqtoolkit.stage1 import Stage1Model
from vqtoolkit.stage2 import Stage2Model

from .conftest import forget_plugin_modules, write, write_plugin
from .test_docs import HOOKS_DOC
from .test_modalities_e2e import RECIPES, TINY, TINY_GPT, sets
from .test_plugins import BUILTINS

GRAYSCALE = '''
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vqtoolkit import Condition, hookimpl, load_image, to_tensor

READS = []  # every spec read() was given: the core's checks run before it
LUMA = {"bt601": (0.299, 0.587, 0.114), "bt709": (0.2126, 0.7152, 0.0722)}


@dataclass(frozen=True)
class Options:
    standard: Literal["bt601", "bt709"] = "bt601"


class Grayscale(Condition):
    name = "grayscale"
    description = "The image in grey."
    Options = Options

    def stage_channels(self, options):
        return 1

    def from_item(self, item, options):
        weights = torch.tensor(LUMA[options.standard]).view(3, 1, 1)
        return (item["image"] * weights).sum(0, keepdim=True)

    def read(self, spec, size, options):
        READS.append(spec)
        return to_tensor(load_image(spec, channels=1))  # no size check of its own

    def render(self, raw, options):
        grey = ((raw[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        return np.repeat(grey[:, :, None], 3, axis=2)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(Grayscale())
'''
TONE = HOOKS_DOC.split("## A plugin with options and no VQGAN", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def slip(old: str, new: str) -> str:
    """The grayscale plugin with one author's slip."""
    assert old in GRAYSCALE
    return GRAYSCALE.replace(old, new)


def vqt(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, f"vqt {' '.join(args)}\n{result.output}\n{result.exception!r}"
    return result.output


def listing() -> dict:
    return json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)


# ---- isolation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, error", [
    (("registry.register(Grayscale())", "registry.register(Grayscale)"),
     "vqt_register_conditions failed, so it was skipped: plugin grayscale registered the class Grayscale, "
     "not an instance; call registry.register(Grayscale())"),
    (("registry.register(Grayscale())", "registry.register(Grayscale()); raise RuntimeError('half done')"),
     "vqt_register_conditions failed, so it was skipped: RuntimeError: half done"),
    (('standard: Literal["bt601", "bt709"] = "bt601"', 'standard: Literal["bt601", "bt709"]'),
     "vqt_register_conditions failed, so it was skipped: condition 'grayscale' from plugin grayscale: "
     "option 'standard' of Options has no default; every condition option needs one (standard: <type> = "
     "<default>), so recipes and bundles that leave it out still work"),
    (("def vqt_register_conditions", "def vqt_register_condition"),
     "implements the unknown hook 'vqt_register_condition'; did you mean 'vqt_register_conditions'?; "
     "the plugin was skipped"),
    (("@hookimpl\n", ""),
     "its function 'vqt_register_conditions' is not marked with @hookimpl (from vqtoolkit import hookimpl), "
     "so it would never be called; the plugin was skipped"),
], ids=["class-not-instance", "raises-after-registering", "option-without-default", "misspelled-hook",
        "unmarked-hook"])
def test_a_failing_plugin_is_reported_once_and_skipped(install_plugin, caplog, edit, error):
    install_plugin("grayscale", slip(*edit))
    with caplog.at_level(logging.WARNING, logger="vqtoolkit.plugins"):
        assert set(plugins.registered()) == BUILTINS  # nothing half-registered, every built-in kept
    assert plugins.get_plugin_manager().info("grayscale").error == error
    assert [r.getMessage() for r in caplog.records] == [f"plugin grayscale: {error}"]

    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1
    row = next(line for line in result.output.splitlines() if line.startswith("grayscale "))
    assert row.split(None, 2)[1:] == ["vqt-test-grayscale", "1.0  error: " + error]
    assert result.output.rstrip().endswith("Error: 1 plugin(s) failed and were skipped: grayscale (the error "
                                           "of each is listed above); fix or uninstall them")
    assert CliRunner().invoke(cli, ["plugins", "--json"]).exit_code == 1
    data = listing()
    assert data["failed"] == ["grayscale"]
    assert next(p for p in data["plugins"] if p["name"] == "grayscale")["error"] == error
    with pytest.raises(PluginError, match=r"^unknown condition 'grayscale'; plugin grayscale failed and was "
                                          r"skipped \(see 'vqt plugins'\)$"):
        plugins.get_condition("grayscale")


def test_a_name_clash_with_a_builtin_skips_only_the_later_plugin(install_plugin):
    # "aaa" sorts before "edge": built-ins still register first, so the third party is the one skipped
    install_plugin("aaa", slip('name = "grayscale"', 'name = "edge"'))
    conditions = plugins.registered()
    assert set(conditions) == BUILTINS and conditions["edge"].plugin == "edge"
    assert plugins.get_plugin_manager().info("aaa").error == (
        "vqt_register_conditions was skipped: condition 'edge' is already registered by plugin edge (built-in); "
        "rename yours, or uninstall one of the two plugins (or restrict VQT_LOAD_PLUGINS)")
    assert vqt("plugins", code=1).count("already registered by plugin edge") == 1


def test_a_command_may_not_replace_another(install_plugin):
    install_plugin("shadow", '''
        import click
        from vqtoolkit import hookimpl

        @hookimpl
        def vqt_register_commands(cli):
            @cli.command("shadow-extra")
            def extra():
                pass

            @cli.command("sample")
            def sample():
                click.echo("not the real sample")
    ''')
    assert "Draw images of any size" in vqt("sample", "--help")
    assert "shadow-extra" not in vqt("--help")  # none of a refused plugin's commands are added
    assert plugins.get_plugin_manager().info("shadow").error == (
        "vqt_register_commands was skipped: command 'sample' already exists, so none of the plugin's commands "
        "were added; give yours another name")


def test_depth_still_trains_beside_broken_plugins(install_plugin, tmp_path):
    install_plugin("grayscale", slip("registry.register(Grayscale())", "registry.register(Grayscale)"))
    install_plugin("aaa", slip('name = "grayscale"', 'name = "edge"'))
    out = vqt("plugins", code=1)
    assert "failed and were skipped: aaa, grayscale" in out and "depth" in out
    # the demo's depth chain, tiny: image VQGAN, depth VQGAN, depth-conditioned transformer
    image, stage, run = tmp_path / "image", tmp_path / "depth-stage", tmp_path / "depth"
    vqt("train-stage1", str(RECIPES / "quickstart.toml"), "--out", str(image), "--device", "cpu",
        *sets(TINY + ["train.max_steps=1"]))
    vqt("train-stage1", str(RECIPES / "quickstart-depth-stage.toml"), "--out", str(stage), "--device", "cpu",
        *sets(TINY + ["train.max_steps=2"]))
    vqt("train-stage2", str(RECIPES / "quickstart-depth.toml"), "--out", str(run), "--device", "cpu",
        *sets(TINY_GPT + [f"condition.stage={stage / 'last.safetensors'}",
                          f"transformer.first_stage={image / 'last.safetensors'}"]))
    assert load_bundle(run / "last.safetensors").condition["name"] == "depth"


def test_plugins_columns_line_up_with_long_sources(install_plugin):
    install_plugin("tone", TONE, version="2026.12.1.post3+local.build.17")
    lines = vqt("plugins").splitlines()
    table = lines[:lines.index("")]
    hooks_at = table[0].index("HOOKS")
    assert all(len(line) > hooks_at and line[hooks_at - 2:hooks_at] == "  " and line[hooks_at] != " "
               for line in table), "\n".join(table)
    conditions = lines[lines.index("CONDITIONS") + 1:]
    conditions = conditions[:conditions.index("")]
    kind_at = {line.index(kind) for line in conditions for kind in ("spatial", "global", "positional")
               if f"  {kind}  " in line}
    assert len(kind_at) == 1


# ---- complete options -----------------------------------------------------------------------------

TINY_VQGAN = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=32)
DATA = 'data = { source = "synthetic", size = 32, n = 8, val_n = 2, num_workers = 0 }\n'
TRAIN = ("train = { max_steps = 2, batch_size = 2, base_learning_rate = 1e-4, channels_last = false, "
         "checkpoint_every = 2, sample_every = 2, log_every = 1 }\n")
STAGE = DATA + TRAIN + """
quantizer = { n_codes = 16, embed_dim = 8 }
loss = { perceptual_weight = 0.0, disc_start = 1000 }  # the GAN stays off: disc_in_channels may stay 3
condition = { name = "grayscale" }

[model]
ch = 32
ch_mult = [1, 1, 2]
num_res_blocks = 1
attn_resolutions = []
z_channels = 8
resolution = 32
in_channels = 1
out_channels = 1
"""


def stage2(name: str, first: Path, extra: str = "") -> str:
    """A one-layer stage-2 recipe over `first` with condition `name` (and `extra` keys of it)."""
    return DATA + TRAIN + (f'transformer = {{ first_stage = "{first}", n_layer = 1, n_head = 2, n_embd = 32, '
                           f'window = 4 }}\nsample = {{ n = 1 }}\ncondition = {{ name = "{name}"{extra} }}\n')


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> Path:
    """A random f = 4 VQGAN: 32-pixel scenes give 8x8 codes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("first") / "vqgan.safetensors"
    Stage1Model.build(ModelConfig(**TINY_VQGAN), QuantizerConfig(embed_dim=8, options={"n_codes": 32})).save(path)
    return path


@pytest.fixture(scope="module")
def grayscale_runs(tmp_path_factory, first_stage) -> Path:
    """The grayscale plugin's condition stage and a stage-2 model, trained with it installed; the
    plugin is uninstalled again afterwards (tests reinstall it when they need it)."""
    folder = tmp_path_factory.mktemp("grayscale")
    write_plugin(folder / "site", "grayscale", GRAYSCALE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder / "site"))
        plugins.reset()
        vqt("train-stage1", str(write(folder / "stage.toml", STAGE)), "--out", str(folder / "stage"))
        recipe = write(folder / "gray.toml", stage2(
            "grayscale", first_stage, f', stage = "{folder / "stage" / "last.safetensors"}"'))
        vqt("train-stage2", str(recipe), "--out", str(folder / "stage2"))
    forget_plugin_modules()
    plugins.reset()
    return folder


def test_options_are_stored_in_full(grayscale_runs, install_plugin):
    install_plugin("grayscale", GRAYSCALE)
    stored = {"name": "grayscale", "options": {"standard": "bt601"},
              "plugin": {"name": "grayscale", "source": "vqt-test-grayscale 1.0"}}
    assert load_bundle(grayscale_runs / "stage" / "last.safetensors").condition == stored
    bundle = load_bundle(grayscale_runs / "stage2" / "last.safetensors")
    assert bundle.condition == bundle.config["condition"] == stored
    for run in ("stage", "stage2"):  # "every value is listed", the plugin's defaults included
        assert 'standard = "bt601"' in (grayscale_runs / run / "recipe.toml").read_text()


def test_a_stage_trained_with_other_options_is_refused(grayscale_runs, install_plugin, tmp_path):
    install_plugin("grayscale", GRAYSCALE)
    recipe = grayscale_runs / "gray.toml"
    stage = grayscale_runs / "stage" / "last.safetensors"
    vqt("tokenize", str(recipe), "--out", str(tmp_path / "same"), "--set", "condition.standard=bt601")
    out = vqt("tokenize", str(recipe), "--out", str(tmp_path / "other"), "--set", "condition.standard=bt709",
              code=1)
    assert out == (f"Error: condition 'grayscale' options differ: condition.standard = 'bt601' in condition stage "
                   f"{stage}, 'bt709' in {recipe}; set the recipe's options as the stage was trained, or train a "
                   "condition stage with these options\n")


def test_the_core_checks_the_cond_file_size_before_the_plugin(grayscale_runs, install_plugin, tmp_path):
    module = install_plugin("grayscale", GRAYSCALE)
    model = grayscale_runs / "stage2" / "last.safetensors"
    small = tmp_path / "small.png"
    Image.new("L", (16, 8), 128).save(small)
    out = vqt("sample", "--model", str(model), "--cond", str(small), "--size", "32x32", "-o", str(tmp_path / "o"),
              code=1)
    assert out == (f"Error: --cond {small} is 16x8 pixels but --size 32x32; condition 'grayscale' needs a file "
                   "of exactly the sample size\n")
    import sys

    assert sys.modules[module].READS == []  # refused before any plugin code ran
    right = tmp_path / "right.png"
    Image.new("L", (32, 32), 128).save(right)
    vqt("sample", "--model", str(model), "--cond", str(right), "--size", "32x32", "-o", str(tmp_path / "o.png"))


def test_a_model_whose_plugin_is_missing_names_bundle_and_package(grayscale_runs, tmp_path):
    model = grayscale_runs / "stage2" / "last.safetensors"
    out = vqt("sample", "--model", str(model), "--cond", "x.png", "--size", "32x32", "-o", str(tmp_path / "o"),
              code=1)
    assert out == (f"Error: model bundle {model} needs condition 'grayscale', which no loaded plugin registers; "
                   "install vqt-test-grayscale (plugin grayscale; version 1.0 wrote it), then check with "
                   "'vqt plugins'\n")


def test_a_model_whose_plugin_fails_names_the_plugin_to_fix(grayscale_runs, install_plugin, tmp_path):
    """The option-without-default slip made after training: refused at registration, so sampling
    the model says which plugin to fix, not a TypeError."""
    install_plugin("grayscale", slip('standard: Literal["bt601", "bt709"] = "bt601"',
                                     'standard: Literal["bt601", "bt709"]'))
    model = grayscale_runs / "stage2" / "last.safetensors"
    out = vqt("sample", "--model", str(model), "--cond", "x.png", "--size", "32x32", "-o", str(tmp_path / "o"),
              code=1)
    assert out.splitlines()[-1] == (
        f"Error: model bundle {model} needs condition 'grayscale', which no loaded plugin registers; plugin "
        "grayscale failed and was skipped; fix plugin grayscale ('vqt plugins' shows its error), then check "
        "with 'vqt plugins'")


def test_an_old_bundle_loads_with_a_note(grayscale_runs, install_plugin, tmp_path, caplog):
    """Bundles from before options were stored in full hold `options: {}` and no plugin."""
    install_plugin("grayscale", GRAYSCALE)
    bundle = load_bundle(grayscale_runs / "stage2" / "last.safetensors")
    old = {"name": "grayscale", "options": {}}
    config = {**bundle.config, "condition": old, "cond_stage": {**bundle.config["cond_stage"], "condition": old}}
    path = tmp_path / "old.safetensors"
    save_bundle(path, bundle.tensors, kind="stage2", config=config, condition=old)
    with caplog.at_level(logging.WARNING, logger="vqtoolkit.condition_options"):
        model = Stage2Model.load(path)
    assert model.condition.options.standard == "bt601"
    assert [r.getMessage() for r in caplog.records] == [
        f"model bundle {path}: condition options standard = 'bt601' are not stored (it was written by a "
        "vqtoolkit that stored only the options its recipe set); they are read as the current defaults of "
        "plugin grayscale (vqt-test-grayscale 1.0). If that plugin's defaults changed since, the model may not "
        "read its condition as it was trained to"]


def test_a_missing_stage_suggests_nothing_built_in(install_plugin, first_stage, tmp_path):
    install_plugin("grayscale", GRAYSCALE)
    recipe = write(tmp_path / "gray.toml", stage2("grayscale", first_stage))
    out = vqt("train-stage2", str(recipe), "--out", str(tmp_path / "run"), code=1)
    assert out == (f"Error: {recipe}: condition 'grayscale' needs its VQGAN: set condition.stage to a bundle "
                   "trained with 'vqt train-stage1' on a recipe with the same [condition] and model.in_channels "
                   "= model.out_channels = 1\n")
    assert "quickstart" not in out


def test_tokens_with_a_default_match_the_default_written_out(install_plugin, first_stage, tmp_path):
    """The docs' tone plugin (options, no VQGAN): shards made with `standard` left at its default are
    the same as with the default spelled out, and differ from another value."""
    install_plugin("tone", TONE)
    recipe = write(tmp_path / "tone.toml", stage2("tone", first_stage))
    shards = tmp_path / "tokens"
    vqt("tokenize", str(recipe), "--out", str(shards))
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["condition"]["options"] == {"standard": "bt601", "levels": 8}
    vqt("train-stage2", str(recipe), "--out", str(tmp_path / "run"), "--set", f"data.tokens='{shards}'",
        "--set", "condition.standard=bt601")
    out = vqt("train-stage2", str(recipe), "--out", str(tmp_path / "run709"), "--set", f"data.tokens='{shards}'",
              "--set", "condition.standard=bt709", code=1)
    assert out == (f"Error: condition 'tone' options differ: condition.standard = 'bt601' in token shards in "
                   f"{shards}, 'bt709' in {recipe}; re-run 'vqt tokenize' with this recipe\n")

    model = tmp_path / "run" / "last.safetensors"
    figures = json.loads(vqt("eval", str(recipe), "--model", str(model), "--json"))
    assert (figures["condition"], figures["condition_options"]) == ("tone", {"standard": "bt601", "levels": 8})
    vqt("sample", "--model", str(model), "--cond", "0.8", "--size", "32x32", "-o", str(tmp_path / "tone.png"))
    assert np.asarray(Image.open(tmp_path / "tone.png")).shape == (32, 32, 3)
