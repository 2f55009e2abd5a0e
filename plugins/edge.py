"""Canny edge maps derived from the image or read from files."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class EdgeCondition(Condition):
    name = "edge"
    description = "Canny edge maps derived from the image or read from files."
    kind = "spatial"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(EdgeCondition())
