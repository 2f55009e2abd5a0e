"""`python -m vqtoolkit.cli`, e.g. under torchrun."""

from . import main

main()
