"""COCO-17 keypoints rendered to a limb map and encoded by a pose VQGAN (DeepFashion)."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class PoseCondition(Condition):
    name = "pose"
    description = "COCO-17 keypoints rendered to a limb map and encoded by a pose VQGAN (DeepFashion)."
    kind = "spatial"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(PoseCondition())
