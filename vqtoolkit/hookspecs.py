"""The plugin hooks of vqtoolkit (pluggy project name and entry-point group: ``vqtoolkit``).

Every hook is documented in docs/plugin_hooks.md; tests/test_docs.py fails when one is not.
Implementations may accept a subset of the arguments, so adding an argument breaks no plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    import numpy as np

    from .conditions import ConditionRegistry
    from .data.sources import DataSourceRegistry
    from .quantizers import QuantizerRegistry
    from .train.run_loggers import LogRun

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


# ---- loggers: observers of a training run (named in the recipe's train.loggers) -------------------
# A logger is a plugin that implements these hooks; `train.loggers` names the plugins to call. Each
# gets its own `run` (a vqtoolkit.train.run_loggers.LogRun) for one training run, on rank 0 only.


@hookspec
def vqt_log_start(run: LogRun) -> None:
    """Open what the logger writes to (a file, a writer, a remote run) and keep it in ``run.state``.

    Fires once per run, on rank 0, before the first training step (after a resume: from the
    checkpoint's step, ``run.start_step``). Raise a VqtError (a missing package, say) to stop the run
    before it trains. Returns nothing.
    """


@hookspec
def vqt_log_metrics(run: LogRun, step: int, record: dict[str, float]) -> None:
    """Take one record of figures at `step`: training means every ``train.log_every`` steps (averaged
    over the logging window and the ranks), held-out ``val_*`` figures every ``sample_every``.

    A logger that raises is reported once and turned off; training goes on. Returns nothing.
    """


@hookspec
def vqt_log_image(run: LogRun, step: int, name: str, image: np.ndarray) -> None:
    """Take one picture at `step`: the sample or reconstruction grid (``name`` "samples" or
    "reconstructions") as an RGB uint8 (H, W, 3) array, also written to the run's samples/ folder.

    A logger that raises is reported once and turned off; training goes on. Returns nothing.
    """


@hookspec
def vqt_log_end(run: LogRun) -> None:
    """Flush and close what ``vqt_log_start`` opened.

    Fires once per started run when training ends: finished, stopped by a signal, or failed with an
    error; also for a logger turned off after an error. Returns nothing.
    """
