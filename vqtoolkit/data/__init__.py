"""Datasets: data sources (folders, paired folders, plugins' sources), the recipe -> dataset mapping,
and token shards. Plugins read their modality of an item with `paired_array` (or `crop_like`).

Names load on first use, so the plugin manager can import the data-source contract without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"CropOptions": "sources", "DataSource": "sources", "DataSourceRegistry": "sources", "ImageFolder": "folders",
            "PairedFolder": "paired", "crop_like": "folders", "paired_array": "folders",
            "first_readable": "folders", "square_crop": "folders", "paired_crop": "paired"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqtoolkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
