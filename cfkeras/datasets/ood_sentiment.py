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

import csv
import os
from pathlib import Path

import numpy as np

from cfkeras.datasets.imdb_cad import CLASS_NAMES

OOD_DATASETS = ("amazon", "twitter", "yelp")
# Names the directory holding `{name}/test.tsv`.
OOD_DIR_ENV = "CFKERAS_OOD_DIR"

_HEADER = ["Sentiment", "Text"]
_HEADER_LINE = "\t".join(_HEADER)


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
    reader = csv.reader(f, delimiter="\t", strict=True)
    texts, labels = [], []
    try:
        header = next(reader, None)
        if header != _HEADER:
            got = "an empty file" if header is None else repr("\t".join(header))
            raise ValueError(f"{name}: line 1: expected the header {_HEADER_LINE!r}, got {got}.")
        for row in reader:
            line = len(texts) + 2
            # One record a line: a stray quote would otherwise swallow the
            # lines up to the next quote into one text, silently.
            if reader.line_num != line:
                raise ValueError(
                    f"{name}: the record starting on line {line} spans lines {line}-"
                    f"{reader.line_num}; every record must be on one line (an unbalanced "
                    'quote `"`?).'
                )
            if len(row) != 2:
                raise ValueError(
                    f"{name}: line {line}: expected 2 tab-separated fields (Sentiment, Text), "
                    f"got {len(row)}."
                )
            label, text = row
            if label not in CLASS_NAMES:
                raise ValueError(
                    f"{name}: line {line}: label {label!r} is not one of {CLASS_NAMES}."
                )
            labels.append(CLASS_NAMES.index(label))
            texts.append(text)
    except csv.Error as e:
        raise ValueError(f"{name}: line {reader.line_num}: malformed TSV: {e}.") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not valid UTF-8 after line {reader.line_num}: {e}.") from e
    if not texts:
        raise ValueError(f"{name}: contains no records.")
    return np.array(texts, dtype=object), np.array(labels, dtype=np.int32)
