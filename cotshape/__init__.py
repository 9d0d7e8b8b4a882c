"""cotshape: train reasoning models on synthetic chains of thought, as a DVC pipeline."""

__version__ = "0.1.0"
