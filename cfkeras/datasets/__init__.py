"""Readers for the real data sets cfkeras learns from."""

from cfkeras.datasets.imdb_cad import ImdbPairs, load_imdb_pairs

__all__ = ["ImdbPairs", "load_imdb_pairs"]
