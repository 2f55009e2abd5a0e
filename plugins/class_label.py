"""One class-label token per image (cIN), with classifier-free guidance."""

from vqtoolkit.conditions import Condition
from vqtoolkit.hookspecs import hookimpl


class ClassCondition(Condition):
    name = "class"
    description = "One class-label token per image (cIN), with classifier-free guidance."
    kind = "global"


@hookimpl
def vqt_register_conditions(registry):
    registry.register(ClassCondition())
