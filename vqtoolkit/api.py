"""The Python API beside the CLI, kept for code written against `vqtoolkit.api`.

New code imports the same names from the package itself: `from vqtoolkit import Stage1Model, Stage2Model`.
"""

from .stage1 import Stage1Model, build_vqgan
from .stage2 import Stage2Model

__all__ = ["Stage1Model", "Stage2Model", "build_vqgan"]
