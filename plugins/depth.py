"""Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN)."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class DepthCondition(Condition):
    name = "depth"
    description = "Depth maps, min-max normalised and encoded by a single-channel VQGAN (D-RIN)."
    kind = "spatial"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(DepthCondition())
