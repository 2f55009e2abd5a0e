"""The conditioning contract plugins implement: `Condition`, its `Kind`, and the registry they add to.

The core never names a modality: it asks the plugin manager (`vqtoolkit.plugins.get_condition`) for
the recipe's `condition.name` and talks to the object it gets back. Built-in modalities live in the
`vqtoolkit_plugins` package and are registered through the `vqt_register_conditions` hook like any
third-party one. This module holds no state.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch

from .errors import PluginError
from .registry import NoOptions, Registry, check_options
from .schema import build_section

Kind = Literal["spatial", "global", "positional"]
ReadSize = Literal["sample", "any"]


class Condition:
    """One conditioning modality, end to end; subclass it and register an instance.

    kind: "spatial" (an index grid aligned with the image grid: segmentation, depth, ...),
    "global" (a few tokens for the whole image: class) or "positional" (a grid of coordinates).
    Spatial and positional token grids are cropped with the same window as the image grid.

    A *raw* condition is what the condition stage reads: a float tensor (C, H, W) aligned with the
    image for spatial/positional kinds, an int64 tensor (L,) for global ones. `Options` is a frozen
    dataclass of this modality's keys in a recipe's [condition] section, every one with a default.
    `read_size` says what `vqt sample --cond FILE` takes for a spatial kind: "sample", a file of
    exactly the sample's size (the core checks an image or .npy file before `read` is called), or
    "any" (e.g. a low-resolution image: `read` checks the file itself).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[Kind] = "spatial"
    Options: ClassVar[type] = NoOptions
    has_stage: ClassVar[bool] = True  # encoded by a VQGAN of its own (trained with train-stage1)
    read_size: ClassVar[ReadSize] = "sample"  # spatial kinds: the --cond file has the sample's size

    def parse_options(self, raw: dict[str, Any], where: str) -> Any:
        """Check the recipe's [condition] keys against `Options`."""
        return build_section("condition", self.Options, raw, where)

    def stage_channels(self, options: Any) -> int:
        """Channels of the raw condition, i.e. the input of its VQGAN."""
        raise NotImplementedError(f"condition '{self.name}' has no VQGAN stage")

    def from_item(self, item: dict[str, Any], options: Any) -> torch.Tensor:
        """The raw condition of a dataset item: read from its paired data or derived from its image."""
        raise NotImplementedError

    def read(self, spec: str, size: tuple[int, int], options: Any) -> torch.Tensor:
        """The raw condition from what the user passed to `vqt sample --cond` (usually a file path),
        for an image of `size` (H, W) pixels. Raise a VqtError naming the file when it is unsuitable."""
        raise NotImplementedError

    def render(self, raw: torch.Tensor, options: Any) -> np.ndarray:
        """An RGB uint8 (H, W, 3) picture of a raw condition, for sample grids."""
        raise NotImplementedError

    def tokens(self, raw: torch.Tensor, options: Any, stage: Any) -> torch.Tensor:
        """Raw conditions (B, ...) -> tokens: (B, h, w) grids for spatial/positional kinds, (B, L)
        for global ones. `stage` is the loaded condition-stage Stage1Model, or None without one."""
        indices = stage.encode(raw)  # (B, h, w)
        return indices

    def vocab_size(self, options: Any, stage: Any) -> int:
        """Number of distinct condition tokens (the transformer's vocabulary must cover them)."""
        return stage.n_codes

    def train_tokens(self, tokens: torch.Tensor, options: Any, generator: torch.Generator) -> torch.Tensor:
        """Tokens as the transformer sees them in training (e.g. class labels dropped to a null token
        for classifier-free guidance). Default: unchanged."""
        return tokens

    def null_tokens(self, options: Any) -> torch.Tensor | None:
        """The "no condition" tokens (L,) for classifier-free guidance, or None when unsupported."""
        return None

    def fidelity(self, images: torch.Tensor, raw: torch.Tensor, options: Any) -> dict[str, float]:
        """How faithfully sampled images (B, C, H, W) in [-1, 1] follow one raw condition, for
        conditions that can be re-derived from an image (edges, low resolution): named figures,
        higher = more faithful. Default: none."""
        return {}


class ConditionRegistry(Registry[Condition]):
    """What `vqt_register_conditions` receives: call `register(condition)` for each modality."""

    kind = "condition"
    base = Condition
    base_path = "vqtoolkit.conditions.Condition"

    def validate(self, condition: Condition) -> None:
        where = self.where(condition)
        if condition.kind not in ("spatial", "global", "positional"):
            raise PluginError(f"{where} has kind {condition.kind!r}; expected 'spatial', 'global' or 'positional'")
        if condition.read_size not in ("sample", "any"):
            raise PluginError(f"{where} has read_size {condition.read_size!r}; expected 'sample' or 'any'")
        check_options(condition.Options, where, "condition")
