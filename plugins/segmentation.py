"""Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR, COCO-Stuff, ADE20K).

The raw condition is the one-hot map (n_labels, H, W) of {0, 1} floats, as in the reference
VQSegmentationModel; its VQGAN reconstructs logits of that map and trains with a binary
cross-entropy (`loss.pixel_loss = "bce"`), so a picture of a reconstruction is the argmax.
Datasets label differently, so the options say how stored values become labels: a shift (the
reference's `shift_segmentation`) and an unlabeled value (COCO-Stuff's 255) with the label it gets,
or none (an all-zero one-hot vector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vqtoolkit.conditions import Condition
from vqtoolkit.errors import RecipeError, VqtError
from vqtoolkit.hookspecs import hookimpl
from vqtoolkit.images import load_label_map
from vqtoolkit_plugins.synthetic.render import N_LABELS

from ._common import check_channels, check_size, missing, paired, palette


@dataclass(frozen=True)
class SegmentationOptions:
    n_labels: int = N_LABELS  # labels 0..n_labels-1; also the channels of the one-hot map (182 for COCO-Stuff)
    label_shift: int = 0  # added to every stored value but `unlabeled` (taming's shift_segmentation is 1)
    unlabeled: int = -1  # the stored value of unlabeled pixels (COCO-Stuff: 255); -1: every value is a label
    unlabeled_label: int = -1  # the label unlabeled pixels get; -1: none, their one-hot vector is all zeros

    def __post_init__(self) -> None:
        if isinstance(self.n_labels, bool) or self.n_labels < 2:
            raise RecipeError(f"condition.n_labels = {self.n_labels!r} is invalid: expected an integer >= 2")
        if self.unlabeled < -1:
            raise RecipeError(f"condition.unlabeled = {self.unlabeled} is invalid: expected a stored label value "
                              ">= 0, or -1 when no value means unlabeled")
        if not -1 <= self.unlabeled_label < self.n_labels:
            raise RecipeError(f"condition.unlabeled_label = {self.unlabeled_label} is invalid: expected a label "
                              f"0..{self.n_labels - 1} (condition.n_labels = {self.n_labels}), or -1 to leave "
                              "unlabeled pixels out of the one-hot map")
        if self.unlabeled_label != -1 and self.unlabeled == -1:
            raise RecipeError(f"condition.unlabeled_label = {self.unlabeled_label} needs condition.unlabeled: the "
                              "stored value of unlabeled pixels (e.g. 255 for COCO-Stuff)")


def to_labels(stored: torch.Tensor, options: SegmentationOptions, source: str) -> torch.Tensor:
    """Stored int64 (H, W) values -> labels (H, W), -1 where a pixel has none; values that are no
    label under the options are an error naming `source`, the value and the option to set."""
    unlabeled = stored == options.unlabeled if options.unlabeled >= 0 else torch.zeros_like(stored, dtype=torch.bool)
    labels = stored + options.label_shift
    wrong = ~unlabeled & ((labels < 0) | (labels >= options.n_labels))
    if bool(wrong.any()):
        raise VqtError(_label_error(source, int(stored[wrong].max()), options))
    return labels.masked_fill(unlabeled, options.unlabeled_label)


def _label_error(source: str, value: int, options: SegmentationOptions) -> str:
    n, shift = options.n_labels, options.label_shift
    label = f"label {value}" if not shift else f"value {value} (label {value + shift} after condition.label_shift = {shift})"
    fixes = "raise condition.n_labels or fix the label map"
    if value == 255 and options.unlabeled == -1:
        fixes = ("if 255 marks unlabeled pixels (COCO-Stuff), set condition.unlabeled = 255; otherwise " + fixes)
    return f"{source} holds {label}, but condition.n_labels = {n} (labels 0..{n - 1}); {fixes}"


def one_hot(labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """int64 (H, W) labels, -1 for none -> float (n_labels, H, W) of {0, 1}; no label is all zeros."""
    hot = torch.nn.functional.one_hot(labels.clamp(min=0), n_labels).permute(2, 0, 1).float()  # (n, H, W)
    return hot * (labels >= 0)


class SegmentationCondition(Condition):
    name = "segmentation"
    description = "Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR, COCO-Stuff, ADE20K)."
    kind = "spatial"
    Options = SegmentationOptions

    def stage_channels(self, options: SegmentationOptions) -> int:
        return options.n_labels

    def from_item(self, item: dict[str, Any], options: SegmentationOptions) -> torch.Tensor:
        labels = paired(item, self.name, load_label_map, mode="nearest")
        if labels is None:
            raise missing(item, self.name, "segmentation")
        source = item["paired"][self.name]
        what = f"label map {source}" if isinstance(source, str) else f"segmentation of item {item.get('name')!r}"
        return one_hot(to_labels(torch.from_numpy(labels), options, what), options.n_labels)

    def read(self, spec: str, size: tuple[int, int], options: SegmentationOptions) -> torch.Tensor:
        """A label map: 8/16-bit greyscale or palette PNG (pixel values are labels, read through the
        options' shift and unlabeled value), or an integer .npy."""
        labels = load_label_map(spec)
        check_size(labels.shape, size, spec, "label map")
        return one_hot(to_labels(torch.from_numpy(labels), options, f"label map {spec}"), options.n_labels)

    def render(self, raw: torch.Tensor, options: SegmentationOptions) -> np.ndarray:
        check_channels(raw, options.n_labels, self.name)
        labels = raw.detach().argmax(dim=0).cpu().numpy()  # (H, W): argmax of one-hot maps or logits
        return palette(options.n_labels)[labels]  # (H, W, 3)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(SegmentationCondition())
