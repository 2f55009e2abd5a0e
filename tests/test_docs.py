"""The plugin documentation is complete and its example works (a missing hook fails here)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vqtoolkit import hookspecs, plugins
from vqtoolkit.cli import cli

from .test_train_stage1 import TINY as TINY_STAGE1
from vqtoolkit.conditions import Condition

DOCS = Path(__file__).resolve().parents[1] / "docs"
HOOKS_DOC = (DOCS / "plugin_hooks.md").read_text()
CONDITIONS_DOC = (DOCS / "conditions.md").read_text()
BUILTINS = ("segmentation", "depth", "edge", "pose", "superres", "class", "coordinates")


def hook_specs() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(hookspecs).items()
            if name.startswith("vqt_") and hasattr(fn, "vqtoolkit_spec")}


def test_there_are_hooks_to_document():
    assert {"vqt_register_conditions", "vqt_register_commands"} <= set(hook_specs())


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_documented_with_its_signature(name):
    params = ", ".join(hook_specs()[name].parameters)
    heading = f"### {name}({params})"
    assert heading in HOOKS_DOC, f"docs/plugin_hooks.md lacks a '{heading}' section"
    section = HOOKS_DOC.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for part in ("**Arguments**", "**Returns**", "**Fires**", "```python", "@hookimpl", f"def {name}("):
        assert part in section, f"the {name} section lacks {part}"


def test_every_condition_member_is_documented():
    contract = HOOKS_DOC.split("## The Condition contract", 1)[1].split("\n## ", 1)[0]
    members = [n for n in vars(Condition) if not n.startswith("_")]
    assert {"name", "kind", "Options", "has_stage", "from_item", "read", "render", "tokens"} <= set(members)
    for member in members:
        assert f"| `{member}" in contract, f"Condition.{member} is missing from the contract table"


def test_the_complete_example_plugin_works(install_plugin):
    example = HOOKS_DOC.split("## A complete plugin", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    install_plugin("brightness", example)
    listing = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert listing["conditions"]["brightness"]["plugin"] == "brightness"
    import torch

    condition = plugins.get_condition("brightness")
    raw = condition.from_item({"image": torch.zeros(3, 8, 8)}, None)
    assert raw.shape == (1, 8, 8) and condition.render(raw, None).shape == (8, 8, 3)


def test_the_data_source_example_trains(install_plugin, tmp_path):
    section = HOOKS_DOC.split("### vqt_register_data_sources(registry)", 1)[1].split("\n## ", 1)[0]
    install_plugin("stripes", section.split("```python\n", 1)[1].split("```", 1)[0])
    listing = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert listing["data_sources"]["stripes"]["plugin"] == "stripes"
    recipe = tmp_path / "stripes.toml"
    recipe.write_text(TINY_STAGE1.replace('source = "synthetic"', 'source = "stripes"\nperiods = 3'))
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                                      "--set", "data.val_n=3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.safetensors").is_file()
    assert "psnr" in result.output  # the held-out set came from the source
    stored = (tmp_path / "run" / "recipe.toml").read_text()
    assert "n = 24\nval_n = 3\nperiods = 3\n" in stored  # the source's options, in full
    for args, message in [(["--set", "data.period=2"], "unknown key 'data.period' for data source 'stripes'; did "
                                                       "you mean 'periods'?"),
                          (["--set", "data.periods=0"], "data.periods = 0 is invalid: expected an integer >= 1"),
                          (["--set", "data.world='graded'"], "data.world is a key of data source synthetic, not of "
                                                             "'stripes'")]:
        bad = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 1 and message in bad.output, bad.output


def test_hook_examples_are_valid_python():
    for block in re.findall(r"```python\n(.*?)```", HOOKS_DOC, flags=re.S):
        compile(block, "docs/plugin_hooks.md", "exec")


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_condition_and_option_is_documented(name):
    condition = plugins.get_condition(name)
    assert f"\n## {name}\n" in CONDITIONS_DOC, f"docs/conditions.md lacks a '## {name}' section"
    section = CONDITIONS_DOC.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    assert condition.description in section
    for field in dataclasses.fields(condition.Options):
        default = field.default
        assert f"`{field.name}`" in section, f"option {name}.{field.name} is undocumented"
        assert f"default {default}" in section, f"the default of {name}.{field.name} ({default}) is undocumented"


RECIPES_DOC = (DOCS / "recipes.md").read_text()


def recipe_sections() -> dict[str, type]:
    from vqtoolkit.config import Recipe

    return {f.name: type(f.default_factory()) for f in dataclasses.fields(Recipe) if f.name != "path"}


@pytest.mark.parametrize("section", sorted(recipe_sections()))
def test_recipes_doc_lists_every_key_with_its_default(section):
    """docs/recipes.md's table of each section holds exactly its keys, each with config.py's default."""
    from vqtoolkit.recipes import _toml_value

    heading = f"\n### [{section}]\n"
    assert heading in RECIPES_DOC, f"docs/recipes.md lacks a '### [{section}]' table"
    table = RECIPES_DOC.split(heading, 1)[1].split("\n#", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| `(.*?)` \|", table, flags=re.M))
    cls = recipe_sections()[section]
    defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls) if f.name != "options"}
    assert set(documented) == set(defaults), f"[{section}]: documented keys differ from config.py"
    for key, value in defaults.items():
        want = _toml_value(list(value) if isinstance(value, tuple) else value)
        assert documented[key] == want, f"{section}.{key}: docs say {documented[key]}, config.py has {want}"


BUILTIN_SOURCES = ("folder", "paired", "synthetic")


def test_every_builtin_data_source_is_a_builtin():
    assert {n for n, r in plugins.get_plugin_manager().data_sources().items()
            if plugins.get_plugin_manager().info(r.plugin).source == "built-in"} == set(BUILTIN_SOURCES)


@pytest.mark.parametrize("name", BUILTIN_SOURCES)
def test_recipes_doc_lists_every_key_of_each_data_source_with_its_default(name):
    """docs/recipes.md has a table per built-in data source holding exactly its Options, with their defaults."""
    from vqtoolkit.recipes import _toml_value
    from vqtoolkit.schema import option_values

    heading = f'\n#### source = "{name}"\n'
    assert heading in RECIPES_DOC, f"docs/recipes.md lacks a '#### source = \"{name}\"' table under [data]"
    table = RECIPES_DOC.split(heading, 1)[1].split("\n#", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| `(.*?)` \|", table, flags=re.M))
    defaults = option_values(plugins.get_data_source(name).Options())
    assert set(documented) == set(defaults), f"data source {name}: documented keys differ from its Options"
    for key, value in defaults.items():
        assert documented[key] == _toml_value(value), f"data.{key} of {name}: docs say {documented[key]}"
@pytest.mark.parametrize("kind", ["vq", "gumbel", "fsq"])
def test_every_builtin_quantizer_option_is_documented_with_its_default(kind):
    """docs/recipes.md lists each built-in quantizer's options with the defaults of its Options."""
    from vqtoolkit.recipes import _toml_value

    heading = f'\n#### kind = "{kind}"\n'
    assert heading in RECIPES_DOC, f"docs/recipes.md lacks a '#### kind = \"{kind}\"' table"
    table = RECIPES_DOC.split(heading, 1)[1].split("\n#", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| `(.*?)` \|", table, flags=re.M))
    defaults = {f.name: f.default for f in dataclasses.fields(plugins.get_quantizer(kind).Options)}
    assert set(documented) == set(defaults), f"quantizer {kind}: documented options differ from its Options"
    for key, value in defaults.items():
        assert documented[key] == _toml_value(list(value) if isinstance(value, tuple) else value), key
