"""Layers used by the papers' models."""

from cfkeras.layers.learned_fill import LearnedFill
from cfkeras.layers.masked_mean import MaskedMean

__all__ = ["LearnedFill", "MaskedMean"]
