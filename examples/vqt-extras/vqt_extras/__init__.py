"""vqt-extras: a data source added through vqtoolkit's plugin hooks.

    csv_source.py  data.source = "csv": images listed in a CSV file, split by a column
"""

from __future__ import annotations

from vqtoolkit.hookspecs import hookimpl

from .csv_source import CsvSource


@hookimpl
def vqt_register_data_sources(registry):
    registry.register(CsvSource())

