"""metrics.jsonl in the run folder: one JSON line per record, read by curves.png, `--resume` and you.

The default logger (`train.loggers = ["jsonl"]`). A resumed run first drops the lines logged after
its checkpoint (vqtoolkit.train.run_dir), so the file holds each step once.
"""

from __future__ import annotations

from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.train.run_dir import append_metrics
from vqtoolkit.train.run_loggers import LogRun


@hookimpl
def vqt_log_metrics(run: LogRun, step: int, record: dict[str, float]) -> None:
    append_metrics(run.path, step, record)
