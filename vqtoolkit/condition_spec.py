"""A condition bound to what it needs: its plugin, parsed options and loaded VQGAN stage (`ConditionSpec`),
and the checks that a condition stage and a condition grid fit the model they serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .condition_options import check_same_options, condition_meta, read_stored
from .conditions import Condition
from .errors import ImageError, RecipeError, VqtError
from .images import pixel_size
from .plugins import get_condition
from .recipes import ConditionConfig
from .stage1 import Stage1Model


@dataclass
class ConditionSpec:
    """A condition plugin with its parsed options and, when it has one, its loaded VQGAN stage.

    `dropout` (condition.dropout) > 0 gives a grid condition classifier-free guidance whatever its
    plugin: one more token id, the null token, stands for "no condition", and training replaces a
    whole grid by it with that probability."""

    condition: Condition
    options: Any
    stage: Stage1Model | None
    dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: ConditionConfig, where: str, device: str | torch.device = "cpu") -> ConditionSpec | None:
        if not cfg.name:
            return None
        condition = get_condition(cfg.name)
        options = condition.parse_options(cfg.options, where)
        stage = None
        if condition.has_stage:
            if not cfg.stage:
                channels = condition.stage_channels(options)
                raise RecipeError(f"{where}: condition '{cfg.name}' needs its VQGAN: set condition.stage to a "
                                  "bundle trained with 'vqt train-stage1' on a recipe with the same [condition] "
                                  f"and model.in_channels = model.out_channels = {channels}")
            stage = Stage1Model.load(cfg.stage, device)
            _check_stage(condition, options, stage, cfg.stage, where)
        if cfg.dropout and not (condition.kind == "spatial" and condition.has_stage):
            raise RecipeError(f"{where}: condition.dropout applies to spatial conditions encoded by a VQGAN, not "
                              f"'{cfg.name}' ({condition.kind}); see its own options with 'vqt plugins'")
        return cls(condition, options, stage, cfg.dropout)

    @property
    def name(self) -> str:
        return self.condition.name

    @property
    def grid_like(self) -> bool:
        """Spatial and positional conditions are index grids cropped with the image's window."""
        return self.condition.kind in ("spatial", "positional")

    def vocab_size(self) -> int:
        return self.condition.vocab_size(self.options, self.stage) + (1 if self.dropout else 0)

    @torch.no_grad()
    def tokens(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw conditions (B, ...) -> (B, h, w) grids or (B, L) tokens."""
        return self.condition.tokens(raw, self.options, self.stage)

    def from_item(self, item: dict[str, Any]) -> torch.Tensor:
        """The raw condition of a dataset item."""
        return self.condition.from_item(item, self.options)

    def read(self, spec: str, size: tuple[int, int]) -> torch.Tensor:
        """The raw condition from `vqt sample --cond SPEC` for an image of `size` (H, W).

        For spatial kinds the core checks the file's size before the plugin reads it, and the raw
        condition's size after: a map of another size would be misplaced, whatever the plugin checks."""
        want = f"--size {size[1]}x{size[0]}"
        if self.condition.kind == "spatial" and self.condition.read_size == "sample":
            found = pixel_size(spec)
            if found is not None and found != tuple(size):
                raise ImageError(f"--cond {spec} is {found[1]}x{found[0]} pixels but {want}; condition "
                                 f"'{self.name}' needs a file of exactly the sample size")
        raw = self.condition.read(spec, size, self.options)
        if self.grid_like and tuple(raw.shape[-2:]) != tuple(size):
            raise ImageError(f"--cond {spec}: condition '{self.name}' read it as a {raw.shape[-1]}x"
                             f"{raw.shape[-2]} map but {want}; its plugin's read() must return (C, H, W) "
                             "at the sample size")
        return raw

    def render(self, raw: torch.Tensor) -> Any:
        """An RGB uint8 (H, W, 3) picture of a raw condition."""
        return self.condition.render(raw, self.options)

    def train_tokens(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Tokens as the transformer sees them in training: whole grids dropped to the null token
        with probability `dropout`, or what the plugin does (e.g. class label dropout)."""
        if not self.dropout:
            return self.condition.train_tokens(tokens, self.options, generator)
        drop = torch.rand(len(tokens), generator=generator, device=generator.device) < self.dropout
        return torch.where(drop.to(tokens.device)[:, None, None], self.null_token, tokens)  # (B, h, w)

    def null_tokens(self) -> torch.Tensor | None:
        """The "no condition" tokens for classifier-free guidance, or None."""
        if self.dropout:
            return torch.tensor([self.null_token])
        return self.condition.null_tokens(self.options)

    @property
    def null_token(self) -> int:
        """With `dropout`: the id after the plugin's own tokens."""
        return self.condition.vocab_size(self.options, self.stage)

    def fidelity(self, images: torch.Tensor, raw: torch.Tensor) -> dict[str, float]:
        """How faithfully samples follow the raw condition `raw` (figures named by the plugin)."""
        return self.condition.fidelity(images, raw, self.options)

    def meta(self) -> dict[str, Any]:
        """The name, every option (defaults included) and the plugin: what bundles and manifests store."""
        return condition_meta(self.condition, self.options)


def _check_stage(condition: Condition, options: Any, stage: Stage1Model, path: str, where: str) -> None:
    trained_for = stage.condition.get("name")
    if trained_for and trained_for != condition.name:
        raise VqtError(f"condition stage {path} was trained for '{trained_for}', not '{condition.name}'")
    if trained_for:  # (the image VQGAN may serve as a stage too: it records no condition)
        _, trained_with = read_stored(stage.condition, f"condition stage {path}")
        check_same_options(condition, trained_with, options, f"condition stage {path}", where,
                           "set the recipe's options as the stage was trained, or train a condition stage "
                           "with these options")
    want = condition.stage_channels(options)
    have = stage.model_config.in_channels
    if want != have:
        raise VqtError(f"condition stage {path} reads {have} channels, but condition '{condition.name}' "
                       f"with these options gives {want}; train its VQGAN with model.in_channels = {want}")


def check_condition_grid(spec: ConditionSpec | None, raw: torch.Tensor, grid: tuple[int, int], where: str) -> None:
    """A spatial/positional condition must tokenize to the image's code grid (same factor f)."""
    if spec is None or not spec.grid_like:
        return
    tokens = spec.tokens(raw[None])  # (1, h, w)
    if tuple(tokens.shape[1:]) != tuple(grid):
        raise RecipeError(f"{where}: condition '{spec.name}' gives a {tokens.shape[2]}x{tokens.shape[1]} token "
                          f"grid but the image gives {grid[1]}x{grid[0]} codes; its tokens must use the image "
                          "VQGAN's factor f (a condition VQGAN with as many downsamplings)")


def prefix_length(spec: ConditionSpec | None, window: int, global_tokens: int = 1) -> int:
    if spec is None:
        return 1  # the start token
    return window * window if spec.grid_like else global_tokens
