"""Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR).

The raw condition is the one-hot map (n_labels, H, W) of {0, 1} floats, as in the reference
VQSegmentationModel; its VQGAN reconstructs logits of that map and trains with a binary
cross-entropy (`loss.pixel_loss = "bce"`), so a picture of a reconstruction is the argmax.
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

    def __post_init__(self) -> None:
        if isinstance(self.n_labels, bool) or self.n_labels < 2:
            raise RecipeError(f"condition.n_labels = {self.n_labels!r} is invalid: expected an integer >= 2")


def one_hot(labels: torch.Tensor, n_labels: int, source: str) -> torch.Tensor:
    """int64 (H, W) labels -> float (n_labels, H, W) of {0, 1}; labels out of range name `source`."""
    top = int(labels.max())
    if top >= n_labels:
        raise VqtError(f"{source} holds label {top}, but condition.n_labels = {n_labels} (labels "
                       f"0..{n_labels - 1}); raise condition.n_labels or fix the label map")
    return torch.nn.functional.one_hot(labels.long(), n_labels).permute(2, 0, 1).float()  # (n, H, W)


class SegmentationCondition(Condition):
    name = "segmentation"
    description = "Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR)."
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
        return one_hot(torch.from_numpy(labels), options.n_labels, what)

    def read(self, spec: str, size: tuple[int, int], options: SegmentationOptions) -> torch.Tensor:
        """A label map: 8/16-bit greyscale or palette PNG (pixel values are labels), or an integer .npy."""
        labels = load_label_map(spec)
        check_size(labels.shape, size, spec, "label map")
        return one_hot(torch.from_numpy(labels), options.n_labels, f"label map {spec}")

    def render(self, raw: torch.Tensor, options: SegmentationOptions) -> np.ndarray:
        check_channels(raw, options.n_labels, self.name)
        labels = raw.detach().argmax(dim=0).cpu().numpy()  # (H, W): argmax of one-hot maps or logits
        return palette(options.n_labels)[labels]  # (H, W, 3)


@hookimpl
def vqt_register_conditions(registry):
    registry.register(SegmentationCondition())
