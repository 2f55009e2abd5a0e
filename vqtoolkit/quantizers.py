"""The quantizer contract plugins implement: `Quantizer`, and the registry they add to.

A recipe's `quantizer.kind` names a registered `Quantizer`; the other keys of its [quantizer] section
(besides the shared `embed_dim`) are that quantizer's `Options`. The built-ins (`vq`, `gumbel`, `fsq`)
register through the `vqt_register_quantizers` hook (`vqtoolkit.models.builtin_quantizers`) exactly
as a third-party quantizer does. What `build` returns follows `vqtoolkit.models.quantize.QuantizerModule`.
This module holds no state.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import PluginError
from .schema import build_section
from .registry import NoOptions, Registry, check_options

if TYPE_CHECKING:
    from .models.quantize import QuantizerModule

SHARED_KEYS = ("kind", "embed_dim")  # [quantizer] keys every kind reads; no quantizer's Options may take them


class Quantizer:
    """One kind of quantizer; subclass it and register an instance.

    `Options` is a frozen dataclass of this kind's keys in a recipe's [quantizer] section, every one
    with a default. Bundles store every option (defaults included), so a model keeps the options it
    was trained with even if the plugin's defaults change.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def parse_options(self, raw: dict[str, Any], where: str) -> Any:
        """Check the [quantizer] keys of a recipe or bundle (all but `kind` and `embed_dim`) against `Options`."""
        return build_section("quantizer", self.Options, raw, where)

    def build(self, options: Any, embed_dim: int) -> QuantizerModule:
        """The quantizer module for parsed `options`, reading and returning maps of `embed_dim` channels."""
        raise NotImplementedError


class QuantizerRegistry(Registry[Quantizer]):
    """What `vqt_register_quantizers` receives: call `register(quantizer)` for each kind."""

    kind = "quantizer"
    base = Quantizer
    base_path = "vqtoolkit.quantizers.Quantizer"

    def validate(self, quantizer: Quantizer) -> None:
        where = self.where(quantizer)
        check_options(quantizer.Options, where, "quantizer")
        taken = [f.name for f in dataclasses.fields(quantizer.Options) if f.name in SHARED_KEYS]
        if taken:
            raise PluginError(f"{where}: option '{taken[0]}' of {quantizer.Options.__name__} is a key every "
                              f"quantizer shares ({', '.join(SHARED_KEYS)}); rename it")
