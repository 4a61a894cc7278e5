"""The papers' reproductions, runnable from an installed package.

`cfkeras-reproduce imdb|snli|imdb-few [args]` (`cli`), or `python -m
cfkeras.reproductions ...`; `examples/reproduce_*_table3.py` are thin
wrappers with the same arguments.

* `imdb_table3`, `snli_table3`: the rows of Table 3 of Teney et al. (ECCV
  2020), every GS row beside its step-matched control;
* `few_counterfactuals`: the IMDb curves against the number k of
  counterfactuals;
* `harness`: grids over seeds and learning rates, reports, figures,
  resumption; `statistics`: paired differences with a t-test and Holm.

The modules import TensorFlow; `statistics` needs scipy and the figures
matplotlib (the `examples` extra).
"""
