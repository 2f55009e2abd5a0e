"""vqtoolkit: Taming Transformers (VQGAN + GPT) as a plugin-based toolkit.

The public face, for scripts and for plugins:

    from vqtoolkit import Stage1Model, Stage2Model          # the two model objects
    from vqtoolkit import Condition, NoOptions, hookimpl    # what a conditioning plugin implements
    from vqtoolkit import paired_array, load_image, to_tensor  # helpers plugins read their data with
    from vqtoolkit import Quantizer, QuantizerModule, CodeUsage  # what a quantizer plugin implements

docs/plugin_hooks.md ("What a plugin may import") lists every name here that plugins may rely on.

Names load on first use (PEP 562), so `import vqtoolkit` and `vqt --help` stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_EXPORTS = {
    "Stage1Model": "stage1",
    "Stage2Model": "stage2",
    "Condition": "conditions",
    "NoOptions": "conditions",
    "Kind": "conditions",
    "hookimpl": "hookspecs",
    "VqtError": "errors",
    "RecipeError": "errors",
    "DataError": "errors",
    "ImageError": "errors",
    "PluginError": "errors",
    "CheckpointError": "errors",
    "crop_like": "data",
    "paired_array": "data",
    "DataSource": "data",
    "Quantizer": "quantizers",
    "QuantizerModule": "models.quantize",
    "CodeUsage": "models.quantize",
    "load_image": "images",
    "load_array": "images",
    "load_label_map": "images",
    "load_rgba": "images",
    "image_mode": "images",
    "to_tensor": "images",
    "to_uint8": "images",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqtoolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
