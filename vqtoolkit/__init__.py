"""vqtoolkit: Taming Transformers (VQGAN + GPT) as a plugin-based toolkit."""

__version__ = "0.1.0"
