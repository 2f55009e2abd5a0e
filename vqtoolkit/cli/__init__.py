"""The `vqt` command line: a thin click layer over the library.

It parses arguments, calls the library, draws progress bars, and turns every `VqtError` into
``Error: <message>`` with a non-zero exit code. `--debug` or `VQT_DEBUG=1` shows tracebacks instead.
Commands live by stage in the modules beside this one; plugins add theirs through the
`vqt_register_commands` hook, loaded when commands are listed. Nothing here imports torch.
"""

from __future__ import annotations

import os
from typing import Any

import click

from ..version import __version__
from ..errors import VqtError
from .evaluate import eval_command
from .stage1 import decode_command, encode_command, train_stage1_command
from .stage2 import sample_command, tokenize_command, train_stage2_command
from .tools import plugins_command


class VqtGroup(click.Group):
    """Loads plugin commands lazily and reports VqtError without a traceback."""

    _plugins_from: object = None  # the plugin manager whose commands were added
    _plugin_commands: dict[str, str] = {}  # command -> the plugin that added it (dropped when the manager changes)

    def _add_plugin_commands(self) -> None:
        from ..plugins import get_plugin_manager

        manager = get_plugin_manager()
        if self._plugins_from is manager:
            return
        self._plugins_from = manager
        for name in self._plugin_commands:  # a fresh manager (tests, VQT_LOAD_PLUGINS) adds its own
            self.commands.pop(name, None)
        before: dict[str, click.Command] = {}

        def kwargs_for(plugin: str) -> dict[str, Any]:
            before.clear()
            before.update(self.commands)
            return {"cli": self}

        added: dict[str, str] = {}

        def accept(plugin: str, ok: bool) -> str:
            """Keep a plugin's commands only when its hook returned and replaced no existing command."""
            replaced = sorted(n for n, c in before.items() if self.commands.get(n) is not c)
            if not ok or replaced:
                self.commands.clear()
                self.commands.update(before)
            added.update({n: plugin for n in self.commands if n not in before})
            return (f"command '{replaced[0]}' already exists, so none of the plugin's commands were "
                    "added; give yours another name") if ok and replaced else ""

        manager.call_each("vqt_register_commands", kwargs_for, accept)
        self._plugin_commands = added

    def plugin_commands(self) -> dict[str, str]:
        """Each command a plugin added (`vqt_register_commands`), with that plugin's name."""
        self._add_plugin_commands()
        return dict(self._plugin_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VqtError as e:
            if _debug(ctx):
                raise
            raise click.ClickException(str(e)) from None


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("VQT_DEBUG", "") not in ("", "0")


@click.group(cls=VqtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqt")
@click.option("--debug", is_flag=True, help="Show full tracebacks (also VQT_DEBUG=1).")
def cli(debug: bool) -> None:
    """vqtoolkit: Taming Transformers (VQGAN + GPT) for high-resolution image synthesis.

    Stage 1 learns a VQGAN that turns images into grids of codebook indices; stage 2 learns a
    transformer over those indices; `sample` draws images of any size with a sliding window.
    """


for _command in (train_stage1_command, encode_command, decode_command, eval_command, tokenize_command,
                 train_stage2_command, sample_command, plugins_command):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="vqt")
