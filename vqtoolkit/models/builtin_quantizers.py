"""The built-in quantizers `vq`, `gumbel` and `fsq`: a plugin, registered through the entry-point group.

Each declares its [quantizer] keys as `Options` (every default here; docs/recipes.md lists them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import _check
from ..errors import RecipeError
from ..hookspecs import hookimpl
from ..quantizers import Quantizer, QuantizerRegistry
from .fsq import FSQuantizer
from .quantize import GumbelQuantizer, QuantizerModule, VectorQuantizer

# FSQ levels for codebooks of about 2^8 .. 2^16 codes (Mentzer et al. 2023, table 1): what an error
# suggests when n_codes and levels disagree.
PAPER_LEVELS = {8: (8, 6, 5), 10: (8, 5, 5, 5), 12: (7, 5, 5, 5, 5), 14: (8, 8, 8, 6, 5), 16: (8, 8, 8, 5, 5, 5)}


def _check_common(n_codes: int, usage_window: int) -> None:
    _check(n_codes >= 2, "quantizer.n_codes", n_codes, "an integer >= 2")
    _check(usage_window >= 1, "quantizer.usage_window", usage_window, "an integer >= 1")


@dataclass(frozen=True)
class VQOptions:
    n_codes: int = 1024  # codebook size
    beta: float = 0.25  # commitment weight
    legacy_beta: bool = False  # the reference code's placement of beta; set by `vqt convert`
    codebook_dim: int = 8  # factorized low-dimensional lookup (0: look up in embed_dim, as the paper)
    l2_normalize: bool = True  # cosine-similarity lookup; with codebook_dim keeps codebooks alive
    ema: bool = False  # EMA codebook updates instead of the codebook loss term
    ema_decay: float = 0.99  # decay of those averages
    restart_dead: bool = True  # re-seed codes unused for `usage_window` batches from encoder outputs
    usage_window: int = 100  # batches over which codebook usage is counted

    def __post_init__(self) -> None:
        _check_common(self.n_codes, self.usage_window)
        _check(self.beta >= 0, "quantizer.beta", self.beta, "a number >= 0")
        _check(self.codebook_dim >= 0, "quantizer.codebook_dim", self.codebook_dim, "an integer >= 0")
        _check(0.0 < self.ema_decay < 1.0, "quantizer.ema_decay", self.ema_decay, "a number in (0, 1)")


class VQ(Quantizer):
    name = "vq"
    description = "Nearest-neighbour codebook lookup with a straight-through gradient (the paper's VQGAN)."
    Options = VQOptions

    def build(self, options: VQOptions, embed_dim: int) -> QuantizerModule:
        return VectorQuantizer(embed_dim=embed_dim, **vars(options))


@dataclass(frozen=True)
class GumbelOptions:
    n_codes: int = 1024  # codebook size
    kl_weight: float = 5e-4  # weight of KL(code distribution || uniform)
    temperature_start: float = 1.0  # Gumbel-softmax temperature at step 0
    temperature_end: float = 0.0625  # the temperature after annealing
    temperature_anneal_steps: int = 150000  # steps of the cosine from start to end
    usage_window: int = 100  # batches over which codebook usage is counted

    def __post_init__(self) -> None:
        _check_common(self.n_codes, self.usage_window)
        _check(self.kl_weight >= 0, "quantizer.kl_weight", self.kl_weight, "a number >= 0")
        _check(self.temperature_start > 0 and self.temperature_end > 0, "quantizer.temperature_end",
               self.temperature_end, "a positive number, as temperature_start")


class Gumbel(Quantizer):
    name = "gumbel"
    description = "Gumbel-softmax over a codebook (taming's GumbelVQ); eval takes the most likely code."
    Options = GumbelOptions

    def build(self, options: GumbelOptions, embed_dim: int) -> QuantizerModule:
        return GumbelQuantizer(embed_dim=embed_dim, **vars(options))


@dataclass(frozen=True)
class FSQOptions:
    levels: tuple[int, ...] = (8, 5, 5, 5)  # values per dimension; prod(levels) codes (the paper's 2^10 set)
    usage_window: int = 100  # batches over which codebook usage is counted

    def __post_init__(self) -> None:
        _check(len(self.levels) >= 1 and all(level >= 3 for level in self.levels), "quantizer.levels",
               list(self.levels), "a non-empty list of integers >= 3 (the paper's: [8, 5, 5, 5] for 1000 codes)")
        _check_common(math.prod(self.levels), self.usage_window)


class FSQ(Quantizer):
    name = "fsq"
    description = "Finite scalar quantization: prod(levels) codes on a fixed grid, no codebook loss."
    Options = FSQOptions

    def parse_options(self, raw: dict[str, Any], where: str) -> FSQOptions:
        """`n_codes` follows from `levels`; a recipe may still state it, if it agrees."""
        raw = dict(raw)
        n_codes = raw.pop("n_codes", None)
        options = super().parse_options(raw, where)
        have = math.prod(options.levels)
        if n_codes is not None and n_codes != have:
            near = PAPER_LEVELS.get(round(math.log2(n_codes))) if isinstance(n_codes, int) and n_codes > 1 else None
            hint = f", or the paper's levels = {list(near)} ({math.prod(near)} codes)" if near else ""
            raise RecipeError(f"{where}: quantizer.n_codes = {n_codes!r} disagrees with quantizer.levels = "
                              f"{list(options.levels)}, which give {have} codes; fsq derives n_codes from levels: "
                              f"remove n_codes{hint}")
        return options

    def build(self, options: FSQOptions, embed_dim: int) -> QuantizerModule:
        return FSQuantizer(options.levels, embed_dim, options.usage_window)


@hookimpl
def vqt_register_quantizers(registry: QuantizerRegistry) -> None:
    for quantizer in (VQ(), Gumbel(), FSQ()):
        registry.register(quantizer)
