"""The plugin hooks of vqtoolkit (pluggy project name and entry-point group: ``vqtoolkit``).

Every hook is documented in docs/plugin_hooks.md; tests/test_docs.py fails when one is not.
Implementations may accept a subset of the arguments, so adding an argument breaks no plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .conditions import ConditionRegistry
    from .data.sources import DataSourceRegistry
    from .quantizers import QuantizerRegistry

hookspec = pluggy.HookspecMarker("vqtoolkit")
hookimpl = pluggy.HookimplMarker("vqtoolkit")


@hookspec
def vqt_register_conditions(registry: ConditionRegistry) -> None:
    """Add conditioning modalities with ``registry.register(condition)``.

    Fires once, the first time a command needs the condition registry. Returns nothing.
    """


@hookspec
def vqt_register_data_sources(registry: DataSourceRegistry) -> None:
    """Add data sources, the values of a recipe's ``data.source``, with ``registry.register(source)``.

    Fires once, the first time a recipe's data is built or ``vqt plugins`` lists sources. Returns nothing.
    """


@hookspec
def vqt_register_quantizers(registry: QuantizerRegistry) -> None:
    """Add quantizers, the values of a recipe's ``quantizer.kind``, with ``registry.register(quantizer)``.

    Fires once, the first time a VQGAN is built or loaded or ``vqt plugins`` lists quantizers. Returns nothing.
    """


@hookspec
def vqt_register_commands(cli: click.Group) -> None:
    """Add click commands to the ``vqt`` command group with ``cli.add_command``.

    Fires when the CLI lists or resolves its commands. Returns nothing.
    """
