"""TensorBoard event files in <run>/tensorboard/: every figure as a scalar, sample grids as images.

Needs the `tensorboard` package (`pip install 'vqtoolkit[tensorboard]'`); selecting the logger
without it stops the run before it trains. A resumed run drops the events logged after its
checkpoint (TensorBoard's purge step), as metrics.jsonl drops those lines; so does a new run started
over in the same folder, for every earlier event.
"""

from __future__ import annotations

import numpy as np

from vqtoolkit.errors import PluginError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.train.run_loggers import LogRun

FOLDER = "tensorboard"  # inside the run folder: `tensorboard --logdir runs` shows every run


@hookimpl
def vqt_log_start(run: LogRun) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PluginError("the tensorboard package is not installed; pip install 'vqtoolkit[tensorboard]', "
                          "or leave 'tensorboard' out of train.loggers") from None
    run.state["writer"] = SummaryWriter(str(run.path / FOLDER), purge_step=run.start_step + 1)


@hookimpl
def vqt_log_metrics(run: LogRun, step: int, record: dict[str, float]) -> None:
    writer = run.state["writer"]
    for key, value in record.items():
        writer.add_scalar(key, value, step)


@hookimpl
def vqt_log_image(run: LogRun, step: int, name: str, image: np.ndarray) -> None:
    run.state["writer"].add_image(name, image, step, dataformats="HWC")


@hookimpl
def vqt_log_end(run: LogRun) -> None:
    run.state["writer"].close()
