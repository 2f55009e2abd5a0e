"""Low-resolution images (bicubic, factor 8) upscaled and encoded by a VQGAN."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class SuperresCondition(Condition):
    name = "superres"
    description = "Low-resolution images (bicubic, factor 8) upscaled and encoded by a VQGAN."
    kind = "spatial"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(SuperresCondition())
