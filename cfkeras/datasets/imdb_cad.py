"""Counterfactually-augmented IMDb pairs (Kaushik, Hovy & Lipton, ICLR 2020).

Each pair is an IMDb review and its counterfactual edit: the same review
minimally rewritten by a human so that its sentiment flips. The three paired
splits of acmi-lab/counterfactually-augmented-data ship gzip-compressed inside
this package (`data/imdb_cad/`, with the upstream Apache-2.0 `LICENSE`), so
`load_imdb_pairs` works offline; a local clone of the upstream repository or a
checksum-verified download can be read instead.

File format (`sentiment/combined/paired/{split}_paired.tsv`): UTF-8,
tab-separated, header `Sentiment<TAB>Text<TAB>batch_id`, quoting as written by
Python's `csv` module (a text containing `"` is quoted and its quotes doubled;
about 40% of rows are), so it is read with `csv.reader(delimiter="\t")` and
default quoting. For the pinned files this gives exactly one record per line
(3414, 490 and 976 after the header), and `csv.writer` writes the parsed rows
back byte for byte. The first row of a batch_id is the original review, the
next row its counterfactual edit.
"""

import dataclasses
import gzip
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np

from cfkeras.datasets import _sources
from cfkeras.datasets._tsv import read_records

UPSTREAM_COMMIT = "6f232a1d2a11462a30ce08fb4825b734ab30828e"
UPSTREAM_URL = (
    "https://raw.githubusercontent.com/acmi-lab/counterfactually-augmented-data/"
    "{commit}/sentiment/combined/paired/{split}_paired.tsv"
)
# SHA-256 of the uncompressed upstream files at UPSTREAM_COMMIT.
SHA256 = {
    "train": "7ac50ca3d70890f80e11ee59955cdbfc43f26b5078d0603717817ab224d2af18",
    "dev": "4c2d8a70cbce23eba27fb1f0bb5043cf044811912435cf8d10c3ea6fc7a51363",
    "test": "9534b20850205c59015b313983cae7afb31c54c04ffcbd19cea7f1bce5011275",
}
# Names a local directory laid out like the upstream repository root.
CAD_DIR_ENV = "CFKERAS_CAD_DIR"

SPLITS = ("train", "dev", "test")
# Label names; the index of a name is its integer label (1 = Positive).
CLASS_NAMES = ("Negative", "Positive")

_SPLIT_ALIASES = {"validation": "dev"}
_HEADER = ["Sentiment", "Text", "batch_id"]
_PAIRED_DIR = ("sentiment", "combined", "paired")
_BATCH_ID = re.compile(r"-?[0-9]+")


@dataclasses.dataclass(frozen=True, eq=False)
class ImdbPairs:
    """Counterfactual pairs of IMDb reviews, one row per pair, original first.

    Attributes:
        text: object array of `str`, shape `(N,)`: the original reviews.
        text_counterfactual: object array of `str`, shape `(N,)`: their
            counterfactual edits.
        label: int32 array, shape `(N,)`: label of `text`, 1 = Positive,
            0 = Negative (see `CLASS_NAMES`).
        label_counterfactual: int32 array, shape `(N,)`: label of
            `text_counterfactual`.
        group_id: int64 array, shape `(N,)`: the upstream `batch_id`.

    Example:

    >>> pairs = cfkeras.datasets.load_imdb_pairs("test")
    >>> len(pairs), pairs.identical_text_pairs
    (488, array([8893]))
    """

    text: np.ndarray
    text_counterfactual: np.ndarray
    label: np.ndarray
    label_counterfactual: np.ndarray
    group_id: np.ndarray

    def __post_init__(self):
        shapes = {f.name: np.shape(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if len(set(shapes.values())) != 1 or len(shapes["text"]) != 1:
            raise ValueError(f"ImdbPairs fields must all have the same shape (N,), got {shapes}.")

    def __len__(self):
        return len(self.group_id)

    @property
    def identical_text_pairs(self):
        """int64 array: group ids of pairs whose two texts are identical."""
        return self.group_id[self.text == self.text_counterfactual]

    @property
    def same_label_pairs(self):
        """int64 array: group ids of pairs whose two labels are equal."""
        return self.group_id[self.label == self.label_counterfactual]

    def to_pairs(self, transform=None, label_dtype="int32"):
        """Counterfactual pairs for gradient supervision, as `cfkeras.Pairs`.

        Row `i` becomes pair `i`: the original review `text[i]` and its
        counterfactual edit `text_counterfactual[i]` (original first), in the
        order of this object. Each pair's `group_id` is its upstream
        `batch_id`.

        Args:
            transform: optional function applied to the texts, once to all
                originals and once to all counterfactual edits, e.g. a
                `keras.layers.TextVectorization` layer. Without it the inputs
                are the texts, as strings.
            label_dtype: dtype of the labels: `"int32"` class ids (1 =
                Positive), or `"float32"` for a sigmoid output trained with
                binary cross-entropy.

        Returns:
            A `cfkeras.Pairs` whose inputs are `transform(text)` and
            `transform(text_counterfactual)` (or the strings themselves).

        Example:

        >>> pairs = cfkeras.datasets.load_imdb_pairs("dev").to_pairs(label_dtype="float32")
        >>> len(pairs), pairs.label[:2], pairs.counterfactual_label[:2]
        (245, array([0., 0.], dtype=float32), array([1., 1.], dtype=float32))
        """
        from cfkeras.pairs import Pairs  # Pairs needs TensorFlow; reading the files does not.

        transform = transform or (lambda text: text)
        return Pairs(
            transform(self.text),
            transform(self.text_counterfactual),
            self.label.astype(label_dtype),
            self.label_counterfactual.astype(label_dtype),
            group_id=self.group_id,
        )


def load_imdb_pairs(split="train", data_dir=None, source="auto"):
    """Loads the counterfactually-augmented IMDb pairs of Kaushik et al. (2020).

    Reads `sentiment/combined/paired/{split}_paired.tsv` of
    acmi-lab/counterfactually-augmented-data at commit `UPSTREAM_COMMIT`. With
    `source="auto"` the file comes from `data_dir` if given, else from the
    directory named by the `CFKERAS_CAD_DIR` environment variable if set, else
    from the copy shipped inside cfkeras (no network). With
    `source="download"` it is downloaded from `UPSTREAM_URL` with
    `keras.utils.get_file` and its SHA-256 checked against `SHA256`.

    Pairs whose two labels are equal or whose two texts are identical are kept
    (see `ImdbPairs.same_label_pairs`, `ImdbPairs.identical_text_pairs`).

    Args:
        split: `"train"`, `"dev"` (alias `"validation"`) or `"test"`.
        data_dir: a directory laid out like the upstream repository root,
            i.e. containing `sentiment/combined/paired/{split}_paired.tsv`.
            With `source="download"` the file is downloaded into that same
            layout under `data_dir` (default: the Keras cache,
            `~/.keras/datasets/counterfactually-augmented-data/`).
        source: `"auto"` or `"download"`.

    Returns:
        An `ImdbPairs` with one row per pair, in file order.

    Raises:
        ValueError: if `split` or `source` is not a valid value, if the file
            is malformed (wrong header or column count, a label other than
            Positive/Negative, a batch_id without exactly two consecutive
            rows), or if a download does not match its SHA-256.
        FileNotFoundError: if `data_dir` or `CFKERAS_CAD_DIR` does not
            contain the split's file.

    Example:

    >>> pairs = cfkeras.datasets.load_imdb_pairs("dev")
    >>> len(pairs)
    245
    >>> pairs.label[:2], pairs.label_counterfactual[:2]
    (array([0, 0], dtype=int32), array([1, 1], dtype=int32))
    """
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r}; valid splits are {', '.join(map(repr, SPLITS))} "
            "(or 'validation', an alias of 'dev')."
        )
    if source not in _sources.SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources are {_sources.SOURCES}.")
    filename = f"{split}_paired.tsv"

    if source == "download":
        path = _download(split, data_dir)
        with open(path, encoding="utf-8", newline="") as f:
            return _parse_paired_tsv(f, str(path))

    if data_dir is None:
        data_dir = os.environ.get(CAD_DIR_ENV) or None
    if data_dir is not None:
        path = Path(data_dir, *_PAIRED_DIR, filename)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: data_dir (or ${CAD_DIR_ENV}) must be laid out like "
                f"the root of acmi-lab/counterfactually-augmented-data, "
                f"containing {'/'.join(_PAIRED_DIR)}/{filename}."
            )
        with open(path, encoding="utf-8", newline="") as f:
            return _parse_paired_tsv(f, str(path))

    packaged = resources.files(__package__) / "data" / "imdb_cad" / f"{filename}.gz"
    with (
        packaged.open("rb") as raw,
        gzip.open(raw, "rt", encoding="utf-8", newline="") as f,
    ):
        return _parse_paired_tsv(f, str(packaged))


def _download(split, data_dir):
    """Downloads one pinned split with `keras.utils.get_file`; returns its path."""
    return _sources.download_upstream(
        f"{split}_paired.tsv",
        UPSTREAM_URL.format(commit=UPSTREAM_COMMIT, split=split),
        SHA256[split],
        data_dir,
        os.path.join(*_PAIRED_DIR),
    )


def _parse_paired_tsv(f, name):
    """Parses a `*_paired.tsv` text stream (opened with `newline=""`).

    `name` identifies the file in error messages.
    """
    rows = []  # (first line, batch_id, label, text), in file order.
    for line, (label, text, batch_id) in read_records(f, name, _HEADER, noun="pairs"):
        if not _BATCH_ID.fullmatch(batch_id):
            raise ValueError(f"{name}: line {line}: batch_id {batch_id!r} is not an integer.")
        if label not in CLASS_NAMES:
            raise ValueError(
                f"{name}: line {line} (batch_id {batch_id}): label {label!r} "
                f"is not one of {CLASS_NAMES}."
            )
        rows.append((line, int(batch_id), CLASS_NAMES.index(label), text))

    groups = {}  # batch_id -> indices into rows, in file order.
    for i, row in enumerate(rows):
        groups.setdefault(row[1], []).append(i)
    for batch_id, indices in groups.items():
        lines = ", ".join(str(rows[i][0]) for i in indices)
        if len(indices) != 2:
            where = f"rows (lines {lines})" if len(indices) > 1 else f"row (line {lines})"
            raise ValueError(
                f"{name}: batch_id {batch_id} has {len(indices)} {where}; every "
                "batch_id must have exactly 2: the original review, then its "
                "counterfactual edit."
            )
        if indices[1] != indices[0] + 1:
            raise ValueError(
                f"{name}: the 2 rows of batch_id {batch_id} are not consecutive (lines {lines})."
            )

    first = [rows[i] for i, _ in groups.values()]
    second = [rows[j] for _, j in groups.values()]
    return ImdbPairs(
        text=np.array([r[3] for r in first], dtype=object),
        text_counterfactual=np.array([r[3] for r in second], dtype=object),
        label=np.array([r[2] for r in first], dtype=np.int32),
        label_counterfactual=np.array([r[2] for r in second], dtype=np.int32),
        group_id=np.array([r[1] for r in first], dtype=np.int64),
    )
