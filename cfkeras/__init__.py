"""cfkeras: learning from counterfactual examples with Keras 3 and TensorFlow."""

from cfkeras import callbacks, export, layers, losses, metrics, models, pairs
from cfkeras.models import GradientSupervisionModel
from cfkeras.pairs import Pairs

__version__ = "0.1.0"

__all__ = [
    "GradientSupervisionModel",
    "Pairs",
    "__version__",
    "callbacks",
    "export",
    "layers",
    "losses",
    "metrics",
    "models",
    "pairs",
]
