"""One class-label token per image (cIN), with classifier-free guidance.

The raw condition is the label as an int64 tensor (1,); its token is the label itself, and
`n_classes` is the null token ("no class"). Training replaces a label by the null token with
probability `label_dropout`, so one model learns p(image | class) and p(image) and `vqt sample
--cfg-scale` can mix them. Labels come from the synthetic scenes, or for paired folders from
labels.csv or class sub-folders (see vqtoolkit.data.PairedFolder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import DataError, RecipeError, VqtError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit_plugins.synthetic.render import N_CLASSES


@dataclass(frozen=True)
class ClassOptions:
    n_classes: int = N_CLASSES  # labels 0..n_classes-1 (1000 for ImageNet); token n_classes means "none"
    label_dropout: float = 0.1  # probability of training on the null token (classifier-free guidance)

    def __post_init__(self) -> None:
        if isinstance(self.n_classes, bool) or self.n_classes < 1:
            raise RecipeError(f"condition.n_classes = {self.n_classes!r} is invalid: expected an integer >= 1")
        if not 0.0 <= self.label_dropout < 1.0:
            raise RecipeError(f"condition.label_dropout = {self.label_dropout!r} is invalid: expected a "
                              "number in [0, 1)")


class ClassCondition(Condition):
    name = "class"
    description = "One class-label token per image (cIN), with classifier-free guidance."
    kind = "global"
    Options = ClassOptions
    has_stage = False

    def from_item(self, item: dict[str, Any], options: ClassOptions) -> torch.Tensor:
        if "label" not in item:
            raise DataError(f"dataset item {item.get('name', '?')!r} has no class label: use data.source = "
                            "\"synthetic\", or \"paired\" with a labels.csv (name,label) in data.root or one "
                            "sub-folder per class under images/")
        label = int(item["label"])
        if not 0 <= label < options.n_classes:
            raise DataError(f"dataset item {item.get('name', '?')!r} has class {label}, outside 0.."
                            f"{options.n_classes - 1} (condition.n_classes = {options.n_classes})")
        return torch.tensor([label])  # (1,)

    def read(self, spec: str, size: tuple[int, int], options: ClassOptions) -> torch.Tensor:
        """The label given by `--class N` (or `--cond N`)."""
        try:
            label = int(spec)
        except ValueError:
            raise VqtError(f"class condition: {spec!r} is not a class number; pass --class N with N in "
                           f"0..{options.n_classes - 1}") from None
        if not 0 <= label < options.n_classes:
            raise VqtError(f"class {label} is out of range: this model knows classes 0..{options.n_classes - 1}")
        return torch.tensor([label])

    def tokens(self, raw: torch.Tensor, options: ClassOptions, stage: Any) -> torch.Tensor:
        """(B, 1) labels -> (B, 1) tokens; the null token `n_classes` is allowed."""
        if raw.ndim != 2 or raw.shape[1] != 1 or raw.dtype.is_floating_point:
            raise VqtError(f"class condition expects integer labels of shape (B, 1), got {raw.dtype} "
                           f"{tuple(raw.shape)}")
        if raw.numel() and (int(raw.min()) < 0 or int(raw.max()) > options.n_classes):
            raise VqtError(f"class labels {int(raw.min())}..{int(raw.max())} are outside 0..{options.n_classes}")
        return raw.long()

    def vocab_size(self, options: ClassOptions, stage: Any) -> int:
        return options.n_classes + 1

    def train_tokens(self, tokens: torch.Tensor, options: ClassOptions, generator: torch.Generator) -> torch.Tensor:
        """Each label becomes the null token with probability `label_dropout` (drawn from `generator`)."""
        if options.label_dropout == 0:
            return tokens
        drop = torch.rand(tokens.shape, generator=generator, device=generator.device) < options.label_dropout
        return torch.where(drop.to(tokens.device), options.n_classes, tokens)

    def null_tokens(self, options: ClassOptions) -> torch.Tensor:
        return torch.tensor([options.n_classes])

    def render(self, raw: torch.Tensor, options: ClassOptions) -> np.ndarray:
        """A small white tile reading "class N" (or "no class" for the null token)."""
        label = int(raw.reshape(-1)[0])
        text = "no class" if label == options.n_classes else f"class {label}"
        tile = Image.new("RGB", (64, 16), "white")
        ImageDraw.Draw(tile).text((2, 2), text, fill="black")
        return np.asarray(tile)  # (16, 64, 3)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(ClassCondition())
