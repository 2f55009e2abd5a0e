import json

import pytest
from click.testing import CliRunner

from vqtoolkit import plugins
from vqtoolkit.cli import cli
from vqtoolkit.errors import PluginError

BUILTINS = {"segmentation", "depth", "edge", "pose", "superres", "class", "coordinates"}  # built-in conditions
BUILTIN_PLUGINS = BUILTINS | {"folders", "synthetic", "taming", "shards", "quantizers", "jsonl", "tensorboard", "export"}  # + sources, commands, quantizers, loggers

NORMALS = """
from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl
import click

class Normals(Condition):
    name = "normals"
    description = "surface normals"
    kind = "spatial"

@hookimpl
def vqt_register_conditions(registry):
    registry.register(Normals())

@hookimpl
def vqt_register_commands(cli):
    @cli.command("hello")
    def hello():
        click.echo("hello from a plugin")
"""


def test_builtins_registered_through_entry_points():
    manager = plugins.get_plugin_manager()
    assert {p.name for p in manager.plugins} >= BUILTIN_PLUGINS
    assert all(p.source == "built-in" for p in manager.plugins if p.name in BUILTIN_PLUGINS)
    assert set(plugins.registered()) == BUILTINS


def test_plugins_command_lists_builtins():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    for name in BUILTIN_PLUGINS:
        assert name in result.output
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert set(data["conditions"]) == BUILTINS
    assert {p["name"] for p in data["plugins"]} >= BUILTIN_PLUGINS


def test_third_party_plugin_is_listed_and_adds_command(install_plugin):
    install_plugin("normals", NORMALS, version="2.3")
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    entry = next(p for p in data["plugins"] if p["name"] == "normals")
    assert entry["source"] == "vqt-test-normals 2.3"
    assert entry["hooks"] == ["vqt_register_commands", "vqt_register_conditions"]
    assert data["conditions"]["normals"]["plugin"] == "normals"
    assert entry["commands"] == ["hello"] and data["commands"]["hello"]["plugin"] == "normals"
    table = CliRunner().invoke(cli, ["plugins"]).output
    assert "[normals, hello]" in table and "\nCOMMANDS\n" in table
    assert next(line for line in table.splitlines() if line.startswith("  hello ")).split()[1] == "normals"
    result = CliRunner().invoke(cli, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_broken_plugin_is_reported_and_skipped(install_plugin):
    install_plugin("broken", "raise RuntimeError('boom at import')\n")
    runner = CliRunner()
    assert runner.invoke(cli, ["--help"]).exit_code == 0
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 1  # listed, and the failure shows in the exit status
    assert "broken" in result.output and "boom at import" in result.output
    assert set(plugins.registered()) == BUILTINS


def test_plugin_whose_hook_raises_is_reported(install_plugin):
    install_plugin("faulty", """
        from vqtoolkit.hookspecs import hookimpl
        @hookimpl
        def vqt_register_conditions(registry):
            raise ValueError("cannot register")
    """)
    assert set(plugins.registered()) == BUILTINS
    assert "cannot register" in plugins.get_plugin_manager().info("faulty").error


def test_misspelled_hook_is_reported(install_plugin):
    install_plugin("typo", """
        from vqtoolkit.hookspecs import hookimpl
        @hookimpl
        def vqt_register_condition(registry):
            pass
    """)
    info = plugins.get_plugin_manager().info("typo")
    assert "unknown hook" in info.error


def test_vqt_load_plugins_empty_loads_only_builtins(install_plugin, monkeypatch):
    install_plugin("normals", NORMALS)
    monkeypatch.setenv("VQT_LOAD_PLUGINS", "")
    plugins.reset()
    assert {p.name for p in plugins.get_plugin_manager().plugins} == BUILTIN_PLUGINS
    monkeypatch.setenv("VQT_LOAD_PLUGINS", "normals")
    plugins.reset()
    assert "normals" in {p.name for p in plugins.get_plugin_manager().plugins}


def test_convert_is_the_builtin_plugin_taming_even_with_only_builtins(monkeypatch):
    import vqtoolkit_plugins.taming

    monkeypatch.delitem(cli.commands, "convert", raising=False)  # added by an earlier test's manager
    monkeypatch.setenv("VQT_LOAD_PLUGINS", "")
    plugins.reset()
    result = CliRunner().invoke(cli, ["convert", "--help"])
    assert result.exit_code == 0, result.output
    assert "Import a taming-transformers checkpoint (.ckpt) safely" in result.output
    assert cli.commands["convert"] is vqtoolkit_plugins.taming.convert_command
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("taming "))
    assert row.split() == ["taming", "built-in", "vqt_register_commands", "[convert]"]
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    entry = next(p for p in data["plugins"] if p["name"] == "taming")
    assert (entry["source"], entry["hooks"], entry["conditions"]) == ("built-in", ["vqt_register_commands"], [])
    assert entry["commands"] == ["convert"] and data["commands"]["convert"]["plugin"] == "taming"
    assert data["commands"]["scene"]["plugin"] == "synthetic"


def test_duplicate_condition_names_both_plugins(install_plugin):
    install_plugin("otherdepth", """
        from vqtoolkit.conditions import Condition
        from vqtoolkit.hookspecs import hookimpl
        class Depth(Condition):
            name = "depth"
        @hookimpl
        def vqt_register_conditions(registry):
            registry.register(Depth())
    """)
    assert set(plugins.registered()) == BUILTINS  # the later registration is the one skipped
    assert plugins.registered()["depth"].plugin == "depth"
    error = plugins.get_plugin_manager().info("otherdepth").error
    assert "condition 'depth' is already registered by plugin depth (built-in)" in error
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1 and "already registered by plugin depth" in result.output


def test_unknown_condition_suggests():
    with pytest.raises(PluginError, match=r"unknown condition 'sgmentation'; did you mean 'segmentation'\?"):
        plugins.get_condition("sgmentation")


def test_plugin_command_conflict_never_breaks_help(install_plugin):
    install_plugin("clash", """
        from vqtoolkit.errors import PluginError
        from vqtoolkit.hookspecs import hookimpl
        @hookimpl
        def vqt_register_commands(cli):
            raise PluginError("command 'sample' clashes with a built-in")
    """)
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "train-stage1" in result.output
    assert "clashes" in plugins.get_plugin_manager().info("clash").error


def test_two_distributions_with_one_plugin_name_are_reported(install_plugin):
    install_plugin("depth", "raise RuntimeError('must never be imported')\n", version="9.9")
    manager = plugins.get_plugin_manager()
    clashes = [p for p in manager.plugins if p.name == "depth" and p.error]
    assert len(clashes) == 1 and "already taken by built-in" in clashes[0].error
    assert "depth" in plugins.registered()


SOURCE = """
from dataclasses import dataclass

from vqtoolkit.data import DataSource
from vqtoolkit.hookspecs import hookimpl


@dataclass(frozen=True)
class Options:
    FIELD


class Waves(DataSource):
    name = "waves"
    Options = Options


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(Waves())
"""


@pytest.mark.parametrize("field, error", [
    ("length: int", "data source 'waves' from plugin waves: option 'length' of Options has no default; every data "
                    "source option needs one"),
    ("size: int = 8", "data source 'waves' from plugin waves: option size of Options is a key every data source "
                      "shares ([data] source, size, num_workers, strict, tokens); give it another name"),
], ids=["no-default", "shared-key"])
def test_a_data_source_with_bad_options_is_skipped(install_plugin, field, error):
    install_plugin("waves", SOURCE.replace("FIELD", field))
    assert "waves" not in plugins.get_plugin_manager().data_sources()
    assert error in plugins.get_plugin_manager().info("waves").error
