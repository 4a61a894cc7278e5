"""Readers for the real data sets cfkeras learns from."""

from cfkeras.datasets.imdb_cad import ImdbPairs, load_imdb_pairs
from cfkeras.datasets.imdb_cad_builder import ImdbCounterfactualPairs, load_imdb_tfds
from cfkeras.datasets.ood_sentiment import load_ood_sentiment
from cfkeras.datasets.snli_cad import SnliGroups, load_snli_groups
from cfkeras.datasets.snli_cad_builder import SnliCounterfactualGroups, load_snli_tfds

__all__ = [
    "ImdbCounterfactualPairs",
    "ImdbPairs",
    "load_imdb_pairs",
    "load_imdb_tfds",
    "load_ood_sentiment",
    "SnliGroups",
    "load_snli_groups",
    "SnliCounterfactualGroups",
    "load_snli_tfds",
]
