"""Layers used by the papers' models."""

from cfkeras.layers.masked_mean import MaskedMean

__all__ = ["MaskedMean"]
