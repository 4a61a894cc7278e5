"""Out-of-domain sentiment test sets (Amazon, Twitter, Yelp) for zero-shot evaluation.

Teney et al. (2020) test their IMDb classifiers, without further training, on
reviews and tweets from other domains. These sets are derived subsets of
third-party releases with no stable upstream URL and no clear licence, so
cfkeras neither ships nor downloads them: `load_ood_sentiment` reads them from
a local directory holding `{name}/test.tsv` for each `name` in
`OOD_DATASETS`.

File format: UTF-8, tab-separated, header `Sentiment<TAB>Text`, labels
`Positive`/`Negative`, one record per line, quoting as written by Python's
`csv` module (a text containing `"` is quoted and its quotes doubled), so it
is read with `csv.reader(delimiter="\\t")` and default quoting.
"""

import os
from pathlib import Path

import numpy as np

from cfkeras.datasets._tsv import read_records
from cfkeras.datasets.imdb_cad import CLASS_NAMES

OOD_DATASETS = ("amazon", "twitter", "yelp")
# Names the directory holding `{name}/test.tsv`.
OOD_DIR_ENV = "CFKERAS_OOD_DIR"

_HEADER = ["Sentiment", "Text"]


def load_ood_sentiment(name, data_dir=None):
    """Loads an out-of-domain sentiment test set.

    Args:
        name: `"amazon"`, `"twitter"` or `"yelp"`.
        data_dir: the directory holding `{name}/test.tsv`; default: the
            directory named by the `CFKERAS_OOD_DIR` environment variable.

    Returns:
        `(texts, labels)`: an object array of `str` and an int32 array, shape
        `(N,)` each, in file order; label 1 = Positive, 0 = Negative (as
        `cfkeras.datasets.imdb_cad.CLASS_NAMES`).

    Raises:
        ValueError: unknown `name`; neither `data_dir` nor `CFKERAS_OOD_DIR`
            given; a malformed file (wrong header, a record that is not 2
            fields on one line, a label other than Positive/Negative, invalid
            UTF-8, no records).
        FileNotFoundError: `{data_dir}/{name}/test.tsv` does not exist.

    Example:

    >>> texts, labels = cfkeras.datasets.load_ood_sentiment("twitter", "../shared/data/ood")
    >>> len(texts), int(labels.sum())
    (1400, 704)
    """
    if name not in OOD_DATASETS:
        raise ValueError(f"Unknown out-of-domain set {name!r}; valid names are {OOD_DATASETS}.")
    if data_dir is None:
        data_dir = os.environ.get(OOD_DIR_ENV) or None
    if data_dir is None:
        raise ValueError(
            f"No directory for the out-of-domain sentiment sets: pass `data_dir` or set "
            f"${OOD_DIR_ENV} to a directory holding {{{','.join(OOD_DATASETS)}}}/test.tsv. "
            "They are not packaged with cfkeras."
        )
    path = Path(data_dir, name, "test.tsv")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: data_dir (or ${OOD_DIR_ENV}) must hold {name}/test.tsv."
        )
    with open(path, encoding="utf-8", newline="") as f:
        return _parse(f, str(path))


def _parse(f, name):
    """Parses a `Sentiment<TAB>Text` stream (opened with `newline=""`)."""
    texts, labels = [], []
    records = read_records(f, name, _HEADER, noun="records", fields="fields", one_line=True)
    for line, (label, text) in records:
        if label not in CLASS_NAMES:
            raise ValueError(f"{name}: line {line}: label {label!r} is not one of {CLASS_NAMES}.")
        labels.append(CLASS_NAMES.index(label))
        texts.append(text)
    return np.array(texts, dtype=object), np.array(labels, dtype=np.int32)
