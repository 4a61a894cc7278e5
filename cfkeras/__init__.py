"""cfkeras: learning from counterfactual examples with Keras 3 and TensorFlow."""

from cfkeras import (
    callbacks,
    datasets,
    embeddings,
    encoders,
    export,
    layers,
    losses,
    masking,
    metrics,
    models,
    optimizers,
    pairs,
    selection,
    serving,
)
from cfkeras.models import GradientSupervisionModel
from cfkeras.pairs import Pairs

__version__ = "0.1.0"

__all__ = [
    "GradientSupervisionModel",
    "Pairs",
    "__version__",
    "callbacks",
    "datasets",
    "embeddings",
    "encoders",
    "export",
    "layers",
    "losses",
    "masking",
    "metrics",
    "models",
    "optimizers",
    "pairs",
    "selection",
    "serving",
]
