"""Models: the gradient-supervision and CAT trainers and the papers' networks."""

from cfkeras.models.counterfactual_adversarial import CounterfactualAdversarialModel
from cfkeras.models.ensemble import StackedEnsemble, stacked_ensemble
from cfkeras.models.gradient_supervision import GradientSupervisionModel
from cfkeras.models.graph import split_at_layer
from cfkeras.models.multi_label_classifier import multi_label_classifier
from cfkeras.models.nli_classifier import nli_classifier
from cfkeras.models.text_classifier import bag_of_embeddings_classifier

__all__ = [
    "CounterfactualAdversarialModel",
    "GradientSupervisionModel",
    "StackedEnsemble",
    "bag_of_embeddings_classifier",
    "multi_label_classifier",
    "nli_classifier",
    "split_at_layer",
    "stacked_ensemble",
]
