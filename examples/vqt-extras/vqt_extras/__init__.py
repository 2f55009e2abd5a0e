"""vqt-extras: one data source and one quantizer, added through vqtoolkit's plugin hooks.

    csv_source.py  data.source = "csv": images listed in a CSV file, split by a column
    residual.py    quantizer.kind = "residual": two codebooks, the second quantizing what the first missed
"""

from __future__ import annotations

from vqtoolkit.hookspecs import hookimpl

from .csv_source import CsvSource
from .residual import Residual


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(CsvSource())


@hookimpl
def vqt_register_quantizers(registry):
    registry.register(Residual())
