"""Normalised pixel coordinates, so sliding-window samples know where they are (FacesHQ)."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class CoordinatesCondition(Condition):
    name = "coordinates"
    description = "Normalised pixel coordinates, so sliding-window samples know where they are (FacesHQ)."
    kind = "positional"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(CoordinatesCondition())
