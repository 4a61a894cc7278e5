"""Counterfactually-augmented SNLI groups (Kaushik, Hovy & Lipton, ICLR 2020).

Each group is an SNLI premise/hypothesis pair and its four counterfactual
edits: crowdworkers rewrote the premise (two edits) or the hypothesis (two
edits) minimally so that the label changes to each of the two other classes.
The `original` and `revised_combined` splits of
acmi-lab/counterfactually-augmented-data ship gzip-compressed inside this
package (`data/snli_cad/`, with the upstream Apache-2.0 `LICENSE`), so
`load_snli_groups` works offline; a local clone of the upstream repository or a
checksum-verified download can be read instead.

File format (`NLI/original/{split}.tsv`, `NLI/revised_combined/{split}.tsv`):
UTF-8, tab-separated, header `sentence1<TAB>sentence2<TAB>gold_label`
(sentence1 = premise, sentence2 = hypothesis), texts containing `"` quoted the
way Python's `csv` writes them, so they are read with
`csv.reader(delimiter="\\t")` and default quoting. Grouping, measured on the
pinned files: row `k` of `original` goes with rows `4k ... 4k+3` of
`revised_combined`, its four edits. (`all_combined` is not in blocks that start
with the original and is not read.) Which sentence an edit changed is read
from which sentence differs from the original's, character for character.
"""

import dataclasses
import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np

from cfkeras.datasets import _sources
from cfkeras.datasets._tsv import read_records

UPSTREAM_COMMIT = "6f232a1d2a11462a30ce08fb4825b734ab30828e"
UPSTREAM_URL = (
    "https://raw.githubusercontent.com/acmi-lab/counterfactually-augmented-data/"
    "{commit}/NLI/{part}/{split}.tsv"
)
# SHA-256 of the uncompressed upstream files at UPSTREAM_COMMIT, by (part, split).
SHA256 = {
    ("original", "train"): "016b1657b1c0eb89e163aa194e5e2da6ca890fd6e97ee42c33de914e7e0a7ce6",
    ("original", "dev"): "27ef042f87b7181c79609b56734caed8fb9c09ba2627d0fe876f7248141fdff7",
    ("original", "test"): "07154b31ea7cf1bb0ac33e37bec143b928edbf2c964a73988973e5c0fe039b07",
    ("revised_combined", "train"): (
        "054a8cf808bcd4a5b3a849eba4e6c1fb49f2f789e3a0f88d21e05f3f38fa5428"
    ),
    ("revised_combined", "dev"): (
        "ff7d6d40a26c5bca5b9d9030db14000a42fbf5bc8a0e6d0d86cc9b378198eb88"
    ),
    ("revised_combined", "test"): (
        "e5a3e55f7df0319decbb34dfa8ab4a4820be1b5ae4af9ee54aeaba539b9636f5"
    ),
}
# Names a local directory laid out like the upstream repository root.
CAD_DIR_ENV = "CFKERAS_CAD_DIR"

SPLITS = ("train", "dev", "test")
PARTS = ("original", "revised_combined")
# Label names; the index of a name is its integer label.
CLASS_NAMES = ("entailment", "neutral", "contradiction")
# What an edit changed, read from which sentence differs from the original's.
CHANGED = ("premise", "hypothesis", "both", "none")
EDITS_PER_GROUP = 4

_SPLIT_ALIASES = {"validation": "dev"}
_HEADER = ["sentence1", "sentence2", "gold_label"]
_NLI_DIR = "NLI"


@dataclasses.dataclass(frozen=True, eq=False)
class SnliGroups:
    """SNLI originals and their four counterfactual edits, one row per group.

    The group id of a row is its index `k`: the row of the original in
    `original/{split}.tsv` (0-based, header excluded).

    Attributes:
        premise: object array of `str`, `(N,)`: the original premises.
        hypothesis: object array of `str`, `(N,)`: the original hypotheses.
        label: int32 array, `(N,)`: the original labels, indices into
            `CLASS_NAMES` (entailment 0, neutral 1, contradiction 2).
        edit_premise: object array of `str`, `(N, 4)`: the edits' premises.
        edit_hypothesis: object array of `str`, `(N, 4)`: their hypotheses.
        edit_label: int32 array, `(N, 4)`: their labels.
        edit_changed: object array of `str`, `(N, 4)`: which sentence each
            edit changed, one of `CHANGED`: `"premise"`, `"hypothesis"`,
            `"both"` or `"none"` (identical to the original, another label).

    Irregular edits are kept as upstream has them: see `changed_both`,
    `identical_edits`, `whitespace_only_edits`, `same_label_edits` and
    `irregular_counts`.

    Example:

    >>> groups = cfkeras.datasets.load_snli_groups("test")
    >>> len(groups), groups.edit_label.shape
    (400, (400, 4))
    >>> groups.identical_edits.tolist()
    [[304, 1]]
    >>> groups.irregular_counts
    {'both': 2, 'none': 1, 'whitespace_only': 0, 'same_label': 0}
    """

    premise: np.ndarray
    hypothesis: np.ndarray
    label: np.ndarray
    edit_premise: np.ndarray
    edit_hypothesis: np.ndarray
    edit_label: np.ndarray
    edit_changed: np.ndarray

    def __post_init__(self):
        shapes = {f.name: np.shape(getattr(self, f.name)) for f in dataclasses.fields(self)}
        n = shapes["premise"]
        if len(n) != 1:
            raise ValueError(f"SnliGroups: premise must have shape (N,), got {n}.")
        expected = {
            name: n if not name.startswith("edit_") else (*n, EDITS_PER_GROUP) for name in shapes
        }
        if shapes != expected:
            raise ValueError(f"SnliGroups: expected shapes {expected}, got {shapes}.")

    def __len__(self):
        return len(self.label)

    @property
    def group_id(self):
        """int64 array `(N,)`: the group ids, `0 ... N-1`."""
        return np.arange(len(self), dtype=np.int64)

    # === Irregular edits ===

    def _where(self, mask):
        return np.argwhere(mask).astype(np.int64)

    @property
    def changed_both(self):
        """int64 array `(M, 2)`: `(group id, edit index)` of edits that changed
        both sentences."""
        return self._where(self.edit_changed == "both")

    @property
    def identical_edits(self):
        """int64 array `(M, 2)`: edits identical to their original (another
        label, same sentences)."""
        return self._where(self.edit_changed == "none")

    @property
    def whitespace_only_edits(self):
        """int64 array `(M, 2)`: edits that differ from their original only in
        whitespace (identical once tokenized on whitespace)."""
        squash = np.vectorize(lambda s: " ".join(s.split()), otypes=[object])
        same = (squash(self.edit_premise) == squash(self.premise)[:, None]) & (
            squash(self.edit_hypothesis) == squash(self.hypothesis)[:, None]
        )
        return self._where(same & (self.edit_changed != "none"))

    @property
    def same_label_edits(self):
        """int64 array `(M, 2)`: edits whose label equals their original's."""
        return self._where(self.edit_label == self.label[:, None])

    @property
    def irregular_counts(self):
        """Counts of the irregular edits: `{"both", "none", "whitespace_only",
        "same_label"}`."""
        return {
            "both": len(self.changed_both),
            "none": len(self.identical_edits),
            "whitespace_only": len(self.whitespace_only_edits),
            "same_label": len(self.same_label_edits),
        }

    # === Pairs ===

    def to_pairs(self, include_edit_pairs=False, one_hot=False):
        """Counterfactual pairs for gradient supervision, as `cfkeras.Pairs`.

        Every original is paired with each of its four edits (original
        first). With `include_edit_pairs`, every two edits of a group whose
        labels differ are paired too (lower edit index first). Pairs are in
        group order; each pair's `group_id` is its group's id, so that a main
        loss can count every original once although it sits in four pairs.

        Args:
            include_edit_pairs: also pair the edits of a group with each other.
            one_hot: labels as float32 one-hot rows `(pairs, 3)` (for a
                sigmoid output trained with binary cross-entropy, as in the
                paper) instead of int32 class ids.

        Returns:
            A `cfkeras.Pairs` whose inputs are dicts `{"premise", "hypothesis"}`
            of strings.
        """
        n = len(self)
        groups, first, second = [], [], []  # first/second: edit index, -1 = the original
        for j in range(EDITS_PER_GROUP):
            groups.append(np.arange(n))
            first.append(np.full(n, -1))
            second.append(np.full(n, j))
        if include_edit_pairs:
            for a in range(EDITS_PER_GROUP):
                for b in range(a + 1, EDITS_PER_GROUP):
                    differ = np.flatnonzero(self.edit_label[:, a] != self.edit_label[:, b])
                    groups.append(differ)
                    first.append(np.full(len(differ), a))
                    second.append(np.full(len(differ), b))
        groups, first, second = (np.concatenate(v) for v in (groups, first, second))
        order = np.lexsort((second, first, groups))  # group-major, originals' pairs first
        groups, first, second = groups[order], first[order], second[order]

        def member(field, index):
            """`field` of the original (index -1) or of edit `index`, per pair."""
            values = getattr(self, field)[groups]
            edits = getattr(self, f"edit_{field}")[groups, np.maximum(index, 0)]
            return np.where(index < 0, values, edits)

        def side(index):
            x = {
                "premise": member("premise", index).astype(str),
                "hypothesis": member("hypothesis", index).astype(str),
            }
            y = member("label", index).astype(np.int32)
            if one_hot:
                y = np.eye(len(CLASS_NAMES), dtype=np.float32)[y]
            return x, y

        from cfkeras.pairs import Pairs  # Pairs needs TensorFlow; reading the files does not.

        (x_i, y_i), (x_j, y_j) = side(first), side(second)
        return Pairs(x_i, x_j, y_i, y_j, group_id=groups.astype(np.int64))


def load_snli_groups(split="train", data_dir=None, source="auto"):
    """Loads the counterfactually-augmented SNLI groups of Kaushik et al. (2020).

    Reads `NLI/original/{split}.tsv` and `NLI/revised_combined/{split}.tsv` of
    acmi-lab/counterfactually-augmented-data at commit `UPSTREAM_COMMIT` and
    groups every original with its four edits (rows `4k ... 4k+3` of
    `revised_combined` for row `k` of `original`). With `source="auto"` the
    files come from `data_dir` if given, else from the directory named by the
    `CFKERAS_CAD_DIR` environment variable if set, else from the copy shipped
    inside cfkeras (no network). With `source="download"` they are downloaded
    from `UPSTREAM_URL` with `keras.utils.get_file` and their SHA-256 checked
    against `SHA256`.

    Irregular edits are kept and counted, not rejected (see
    `SnliGroups.irregular_counts`). In the pinned files: train has 9 edits
    that change both sentences (in 8 of them one sentence differs only in
    whitespace), 34 identical to their original, and 3 that differ from it
    only in whitespace; dev has 1 identical edit; test 2 that change both
    (one sentence only in whitespace) and 1 identical. No edit keeps its
    original's label.

    Args:
        split: `"train"`, `"dev"` (alias `"validation"`) or `"test"`.
        data_dir: a directory laid out like the upstream repository root,
            i.e. containing `NLI/original/{split}.tsv` and
            `NLI/revised_combined/{split}.tsv`. With `source="download"` the
            files are downloaded into that same layout under `data_dir`
            (default: the Keras cache,
            `~/.keras/datasets/counterfactually-augmented-data/`).
        source: `"auto"` or `"download"`.

    Returns:
        A `SnliGroups` with one row per original, in file order.

    Raises:
        ValueError: if `split` or `source` is not a valid value, if a file is
            malformed (wrong header or column count, a label other than
            entailment/neutral/contradiction, or a number of edits other than
            four per original), or if a download does not match its SHA-256.
        FileNotFoundError: if `data_dir` or `CFKERAS_CAD_DIR` does not
            contain the split's files.

    Example:

    >>> groups = cfkeras.datasets.load_snli_groups("dev")
    >>> len(groups)
    200
    >>> int(groups.label[0]), groups.edit_label[0].tolist()
    (1, [2, 2, 0, 0])
    >>> groups.edit_changed[0].tolist()
    ['hypothesis', 'premise', 'premise', 'hypothesis']
    """
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r}; valid splits are {', '.join(map(repr, SPLITS))} "
            "(or 'validation', an alias of 'dev')."
        )
    if source not in _sources.SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources are {_sources.SOURCES}.")

    if source == "download":
        paths = {part: _download(part, split, data_dir) for part in PARTS}
        return _read_paths(paths)

    if data_dir is None:
        data_dir = os.environ.get(CAD_DIR_ENV) or None
    if data_dir is not None:
        paths = {part: Path(data_dir, _NLI_DIR, part, f"{split}.tsv") for part in PARTS}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: data_dir (or ${CAD_DIR_ENV}) must be laid out like "
                    "the root of acmi-lab/counterfactually-augmented-data, containing "
                    f"{_NLI_DIR}/original/{split}.tsv and {_NLI_DIR}/revised_combined/{split}.tsv."
                )
        return _read_paths(paths)

    rows = {}
    for part in PARTS:
        packaged = resources.files(__package__) / "data" / "snli_cad" / part / f"{split}.tsv.gz"
        with (
            packaged.open("rb") as raw,
            gzip.open(raw, "rt", encoding="utf-8", newline="") as f,
        ):
            rows[part] = _parse_tsv(f, str(packaged))
    return _group(rows["original"], rows["revised_combined"], _names(split, "packaged"))


def _names(split, where):
    return {part: f"{where} {_NLI_DIR}/{part}/{split}.tsv" for part in PARTS}


def _read_paths(paths):
    rows = {}
    for part, path in paths.items():
        with open(path, encoding="utf-8", newline="") as f:
            rows[part] = _parse_tsv(f, os.fspath(path))
    return _group(
        rows["original"],
        rows["revised_combined"],
        {part: os.fspath(path) for part, path in paths.items()},
    )


def upstream_url(part, split):
    """The pinned upstream URL of one file (`part` in `PARTS`, `split` in `SPLITS`)."""
    return UPSTREAM_URL.format(commit=UPSTREAM_COMMIT, part=part, split=split)


def _download(part, split, data_dir):
    """Downloads one pinned file with `keras.utils.get_file`; returns its path."""
    return _sources.download_upstream(
        f"{split}.tsv",
        upstream_url(part, split),
        SHA256[(part, split)],
        data_dir,
        os.path.join(_NLI_DIR, part),
    )


def _parse_tsv(f, name):
    """Parses one NLI `.tsv` text stream (opened with `newline=""`).

    Returns a list of `(line, premise, hypothesis, label)`; `name`
    identifies the file in error messages.
    """
    rows = []
    records = read_records(f, name, _HEADER, noun="rows", row_numbers=True)
    for line, (premise, hypothesis, label) in records:
        if label not in CLASS_NAMES:
            raise ValueError(
                f"{name}: line {line} (row {len(rows)}): label {label!r} is not one "
                f"of {CLASS_NAMES}."
            )
        rows.append((line, premise, hypothesis, CLASS_NAMES.index(label)))
    return rows


def _group(original, revised, names):
    """Groups row `k` of `original` with rows `4k ... 4k+3` of `revised`."""
    n = len(original)
    if len(revised) != EDITS_PER_GROUP * n:
        complete = min(n, len(revised) // EDITS_PER_GROUP)
        if complete < n:
            where = (
                f"the original at row {complete} (line {original[complete][0]}) of "
                f"{names['original']} has {len(revised) - EDITS_PER_GROUP * complete} edit(s)"
            )
        else:
            extra = revised[EDITS_PER_GROUP * n]
            where = (
                f"rows from row {EDITS_PER_GROUP * n} (line {extra[0]}) of "
                f"{names['revised_combined']} have no original"
            )
        raise ValueError(
            f"{names['revised_combined']} has {len(revised)} rows for the {n} originals of "
            f"{names['original']}; expected {EDITS_PER_GROUP} x {n} = {EDITS_PER_GROUP * n} "
            f"(four edits per original, in order): {where}."
        )
    column = lambda rows, i: np.array([r[i] for r in rows], dtype=object)
    premise, hypothesis = column(original, 1), column(original, 2)
    shape = (n, EDITS_PER_GROUP)
    edit_premise = column(revised, 1).reshape(shape)
    edit_hypothesis = column(revised, 2).reshape(shape)
    premise_changed = edit_premise != premise[:, None]
    hypothesis_changed = edit_hypothesis != hypothesis[:, None]
    edit_changed = np.select(
        [premise_changed & hypothesis_changed, premise_changed, hypothesis_changed],
        ["both", "premise", "hypothesis"],
        default="none",
    ).astype(object)
    return SnliGroups(
        premise=premise,
        hypothesis=hypothesis,
        label=np.array([r[3] for r in original], dtype=np.int32),
        edit_premise=edit_premise,
        edit_hypothesis=edit_hypothesis,
        edit_label=np.array([r[3] for r in revised], dtype=np.int32).reshape(shape),
        edit_changed=edit_changed,
    )
