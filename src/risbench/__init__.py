"""risbench: referring image segmentation papers re-implemented in one Lightning + Hydra suite."""

__version__ = "0.1.0"
