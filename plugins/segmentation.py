"""Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR)."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class SegmentationCondition(Condition):
    name = "segmentation"
    description = "Semantic label maps, one-hot encoded by a segmentation VQGAN (S-FLCKR)."
    kind = "spatial"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(SegmentationCondition())
