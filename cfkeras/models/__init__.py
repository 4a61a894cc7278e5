"""Models: the gradient-supervision trainer and the papers' networks."""

from cfkeras.models.gradient_supervision import GradientSupervisionModel, split_at_layer
from cfkeras.models.text_classifier import bag_of_embeddings_classifier

__all__ = ["GradientSupervisionModel", "bag_of_embeddings_classifier", "split_at_layer"]
