"""Tests for `cfkeras.datasets.imdb_cad`: packaged copy, sources, validation, pairs."""

import doctest
import gzip
import hashlib
import importlib
from pathlib import Path

import keras
import numpy as np
import pytest

import cfkeras
from cfkeras.datasets import imdb_cad
from cfkeras.datasets.imdb_cad import CAD_DIR_ENV, ImdbPairs, load_imdb_pairs

REPO_ROOT = Path(__file__).resolve().parents[2]
CAD_DIR = REPO_ROOT.parent / "shared" / "data" / "cad"
PACKAGED_DIR = REPO_ROOT / "cfkeras" / "datasets" / "data" / "imdb_cad"
PAIRED = ("sentiment", "combined", "paired")

SPLITS = ("train", "dev", "test")
HEADER = "Sentiment\tText\tbatch_id\n"
# Counted independently: `wc -l` minus the header, halved.
NUM_PAIRS = {"train": 1707, "dev": 245, "test": 488}
IDENTICAL_TEXT = {"train": [8822], "dev": [], "test": [8893]}

needs_shared = pytest.mark.skipif(
    not CAD_DIR.is_dir(),
    reason=f"upstream copy of the CAD data not found at {CAD_DIR} (shared/ is "
    "expected beside the repository)",
)


@pytest.fixture(autouse=True)
def _no_cad_dir_env(monkeypatch):
    monkeypatch.delenv(CAD_DIR_ENV, raising=False)


def assert_pairs_equal(a, b):
    assert isinstance(a, ImdbPairs) and isinstance(b, ImdbPairs)
    for field in ("text", "text_counterfactual", "label", "label_counterfactual"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.group_id.dtype == b.group_id.dtype
    np.testing.assert_array_equal(a.group_id, b.group_id)


def write_paired(root, split, content):
    """Writes `content` where the upstream layout under `root` expects `split`."""
    path = root.joinpath(*PAIRED, f"{split}_paired.tsv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8", newline="")
    return path


# === The packaged copy ===


@pytest.mark.parametrize("split", SPLITS)
def test_packaged_copy_matches_pinned_checksum(split):
    data = gzip.decompress((PACKAGED_DIR / f"{split}_paired.tsv.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == imdb_cad.SHA256[split]


@needs_shared
@pytest.mark.parametrize("split", SPLITS)
def test_packaged_copy_is_byte_identical_to_upstream(split):
    packaged = gzip.decompress((PACKAGED_DIR / f"{split}_paired.tsv.gz").read_bytes())
    upstream = CAD_DIR.joinpath(*PAIRED, f"{split}_paired.tsv").read_bytes()
    assert packaged == upstream


@needs_shared
def test_packaged_license_is_upstream_license():
    assert (PACKAGED_DIR / "LICENSE").read_bytes() == (CAD_DIR / "LICENSE").read_bytes()


# === Sources ===


@needs_shared
@pytest.mark.parametrize("split", SPLITS)
def test_packaged_data_dir_and_env_var_agree(split, monkeypatch):
    packaged = load_imdb_pairs(split)
    assert_pairs_equal(packaged, load_imdb_pairs(split, data_dir=CAD_DIR))
    assert_pairs_equal(packaged, load_imdb_pairs(split, data_dir=str(CAD_DIR)))
    monkeypatch.setenv(CAD_DIR_ENV, str(CAD_DIR))
    assert_pairs_equal(packaged, load_imdb_pairs(split))


def test_env_var_is_used_and_data_dir_overrides_it(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    write_paired(env_dir, "dev", "Sentiment\tText\tbatch_id\nNegative\ta\t1\nPositive\tb\t1\n")
    write_paired(arg_dir, "dev", "Sentiment\tText\tbatch_id\nPositive\tc\t2\nNegative\td\t2\n")
    monkeypatch.setenv(CAD_DIR_ENV, str(env_dir))
    assert load_imdb_pairs("dev").group_id.tolist() == [1]
    assert load_imdb_pairs("dev", data_dir=arg_dir).group_id.tolist() == [2]


def test_missing_file_in_data_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentiment/combined/paired/test_paired.tsv"):
        load_imdb_pairs("test", data_dir=tmp_path)


def test_download_uses_pinned_url_and_verifies_sha256(tmp_path, monkeypatch):
    # A file:// origin runs the real keras.utils.get_file path without network.
    origin = tmp_path / "origin"
    origin.mkdir()
    upstream = gzip.decompress((PACKAGED_DIR / "dev_paired.tsv.gz").read_bytes())
    (origin / "dev_paired.tsv").write_bytes(upstream)
    assert "{commit}" in imdb_cad.UPSTREAM_URL and "{split}" in imdb_cad.UPSTREAM_URL
    monkeypatch.setattr(imdb_cad, "UPSTREAM_URL", origin.as_uri() + "/{split}_paired.tsv")

    cache = tmp_path / "cache"
    pairs = load_imdb_pairs("validation", data_dir=cache, source="download")
    assert_pairs_equal(pairs, load_imdb_pairs("dev"))
    assert cache.joinpath(*PAIRED, "dev_paired.tsv").read_bytes() == upstream

    (origin / "dev_paired.tsv").write_bytes(upstream.replace(b"Positive", b"Negative", 1))
    with pytest.raises(ValueError, match="hash does not match"):
        load_imdb_pairs("dev", data_dir=tmp_path / "cache2", source="download")


# === Contents ===


@pytest.mark.parametrize("split", SPLITS)
def test_number_of_pairs_and_dtypes(split):
    pairs = load_imdb_pairs(split)
    n = NUM_PAIRS[split]
    assert len(pairs) == n
    for field in (
        "text",
        "text_counterfactual",
        "label",
        "label_counterfactual",
        "group_id",
    ):
        assert getattr(pairs, field).shape == (n,), field
    assert pairs.text.dtype == object and pairs.text_counterfactual.dtype == object
    assert all(isinstance(t, str) and t for t in pairs.text)
    assert all(isinstance(t, str) and t for t in pairs.text_counterfactual)
    assert pairs.label.dtype == np.int32 and pairs.label_counterfactual.dtype == np.int32
    assert pairs.group_id.dtype == np.int64
    assert len(np.unique(pairs.group_id)) == n


def test_validation_is_an_alias_of_dev():
    assert_pairs_equal(load_imdb_pairs("validation"), load_imdb_pairs("dev"))


@pytest.mark.parametrize("split", SPLITS)
def test_labels_flip_in_every_pair(split):
    pairs = load_imdb_pairs(split)
    assert set(pairs.label.tolist()) == {0, 1}
    np.testing.assert_array_equal(pairs.label_counterfactual, 1 - pairs.label)
    assert pairs.same_label_pairs.tolist() == []


@pytest.mark.parametrize("split", SPLITS)
def test_identical_text_pairs_are_kept_and_reported(split):
    pairs = load_imdb_pairs(split)
    assert pairs.identical_text_pairs.tolist() == IDENTICAL_TEXT[split]
    for group_id in IDENTICAL_TEXT[split]:
        (i,) = np.flatnonzero(pairs.group_id == group_id)
        assert pairs.text[i] == pairs.text_counterfactual[i]
        assert pairs.label[i] != pairs.label_counterfactual[i]


def test_first_pairs_of_train_in_file_order():
    pairs = load_imdb_pairs("train")
    assert pairs.group_id[:2].tolist() == [4, 40]
    assert pairs.text[0].startswith("Long, boring, blasphemous.")
    assert pairs.text_counterfactual[0].startswith("Long, fascinating, soulful.")
    assert (pairs.label[0], pairs.label_counterfactual[0]) == (0, 1)


def test_csv_quoting_is_undone(tmp_path):
    content = (
        "Sentiment\tText\tbatch_id\n"
        'Negative\t"A ""comedy"",\tsadly."\t7\n'
        'Positive\t"A ""comedy""!"\t7\n'
    )
    write_paired(tmp_path, "train", content)
    pairs = load_imdb_pairs("train", data_dir=tmp_path)
    assert pairs.text.tolist() == ['A "comedy",\tsadly.']
    assert pairs.text_counterfactual.tolist() == ['A "comedy"!']


def test_same_label_pairs_are_kept_and_reported(tmp_path):
    content = HEADER + "Positive\ta\t3\nPositive\tb\t3\nNegative\tc\t5\nPositive\tc\t5\n"
    write_paired(tmp_path, "test", content)
    pairs = load_imdb_pairs("test", data_dir=tmp_path)
    assert pairs.same_label_pairs.tolist() == [3]
    assert pairs.identical_text_pairs.tolist() == [5]


# === As cfkeras.Pairs ===

PAIR_FIELDS = ("original", "counterfactual", "label", "counterfactual_label", "group_id")


def assert_same_pairs(a, b):
    assert isinstance(a, cfkeras.Pairs) and isinstance(b, cfkeras.Pairs)
    for field in PAIR_FIELDS:
        x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.sample_weight is None and b.sample_weight is None


@pytest.mark.parametrize("split", SPLITS)
def test_to_pairs_equals_the_hand_packed_pairs(split):
    data = load_imdb_pairs(split)
    pairs = data.to_pairs()
    by_hand = cfkeras.Pairs(
        data.text,
        data.text_counterfactual,
        data.label,
        data.label_counterfactual,
        group_id=data.group_id,
    )
    assert_same_pairs(pairs, by_hand)
    assert len(pairs) == NUM_PAIRS[split]
    assert pairs.original.tolist() == data.text.tolist()  # strings, in file order
    assert pairs.label.dtype == np.int32 and pairs.group_id.dtype == np.int64


def test_to_pairs_applies_the_transform_once_per_side(tmp_path):
    content = HEADER + "".join(
        f"Negative\tdull plot {k}\t{k}\nPositive\tgreat plot {k}\t{k}\n" for k in range(4)
    )
    write_paired(tmp_path, "dev", content)
    data = load_imdb_pairs("dev", data_dir=tmp_path)
    vectorize = keras.layers.TextVectorization(max_tokens=16, output_sequence_length=3)
    vectorize.adapt(np.concatenate([data.text, data.text_counterfactual]))
    calls = []

    def transform(texts):
        calls.append(texts.tolist())
        return vectorize(texts)

    pairs = data.to_pairs(transform, label_dtype="float32")
    assert calls == [data.text.tolist(), data.text_counterfactual.tolist()]
    by_hand = cfkeras.Pairs(
        vectorize(data.text),
        vectorize(data.text_counterfactual),
        data.label.astype("float32"),
        data.label_counterfactual.astype("float32"),
        group_id=data.group_id,
    )
    assert_same_pairs(pairs, by_hand)
    assert pairs.label.tolist() == [0.0] * 4 and pairs.counterfactual_label.tolist() == [1.0] * 4
    assert pairs.group_id.tolist() == [0, 1, 2, 3]
    # "dull" and "great" are the only tokens that differ within a pair.
    vocabulary = vectorize.get_vocabulary()
    assert [vocabulary[t] for t in np.asarray(pairs.original)[0]] == ["dull", "plot", "0"]
    assert [vocabulary[t] for t in np.asarray(pairs.counterfactual)[0]] == ["great", "plot", "0"]


# === Errors ===

MALFORMED = {
    "one_row": (
        HEADER + "Negative\ta\t1\nPositive\tb\t1\nNegative\tc\t2\n",
        r"batch_id 2 has 1 row \(line 4\); every batch_id must have exactly 2",
    ),
    "three_rows": (
        HEADER + "Negative\ta\t1\nPositive\tb\t1\nPositive\tc\t1\n",
        r"batch_id 1 has 3 rows \(lines 2, 3, 4\)",
    ),
    "not_consecutive": (
        HEADER + "Negative\ta\t1\nNegative\tb\t2\nPositive\tc\t1\nPositive\td\t2\n",
        r"rows of batch_id 1 are not consecutive \(lines 2, 4\)",
    ),
    "bad_label": (
        HEADER + "Negative\ta\t1\nNeutral\tb\t1\n",
        (
            r"line 3 \(batch_id 1\): label 'Neutral' is not one of "
            r"\('Negative', 'Positive'\)"
        ),
    ),
    "wrong_header": (
        "label\ttext\tid\nNegative\ta\t1\nPositive\tb\t1\n",
        (
            r"line 1: expected the header 'Sentiment\\tText\\tbatch_id', "
            r"got 'label\\ttext\\tid'"
        ),
    ),
    "two_columns": (
        HEADER + "Negative\ta\t1\nPositive\tb\n",
        (
            r"line 3: expected 3 tab-separated columns "
            r"\(Sentiment, Text, batch_id\), got 2"
        ),
    ),
    "four_columns": (
        HEADER + "Negative\ta\t1\nPositive\tb\t1\textra\n",
        r"line 3: expected 3 tab-separated columns .*got 4",
    ),
    "non_integer_batch_id": (
        HEADER + "Negative\ta\tx1\nPositive\tb\tx1\n",
        r"line 2: batch_id 'x1' is not an integer",
    ),
    "stray_quote": (
        HEADER + 'Negative\t"a"b\t1\nPositive\tb\t1\n',
        r"line 2: malformed TSV",
    ),
    "empty_file": ("", r"line 1: expected the header .*got an empty file"),
    "header_only": (HEADER, r"contains no pairs"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_naming_file_and_problem(case, tmp_path):
    content, message = MALFORMED[case]
    path = write_paired(tmp_path, "dev", content)
    with pytest.raises(ValueError, match=message) as info:
        load_imdb_pairs("dev", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path}: ")


def test_line_numbers_count_physical_lines_of_multiline_texts(tmp_path):
    content = HEADER + 'Negative\t"two\nlines"\t1\nPositive\tb\t1\nNeutral\tc\t2\n'
    write_paired(tmp_path, "dev", content)
    with pytest.raises(ValueError, match=r"line 5 \(batch_id 2\)"):
        load_imdb_pairs("dev", data_dir=tmp_path)


@pytest.mark.parametrize("split", ["training", "val", "Train", "", None])
def test_unknown_split_raises_naming_valid_splits(split):
    with pytest.raises(ValueError, match=r"valid splits are 'train', 'dev', 'test'"):
        load_imdb_pairs(split)


def test_unknown_source_raises():
    with pytest.raises(ValueError, match="valid sources are"):
        load_imdb_pairs("dev", source="tfds")


def test_mismatched_field_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        ImdbPairs(
            text=np.array(["a"], dtype=object),
            text_counterfactual=np.array(["b", "c"], dtype=object),
            label=np.zeros(1, np.int32),
            label_counterfactual=np.ones(1, np.int32),
            group_id=np.zeros(1, np.int64),
        )


# === Docs ===


def test_docstring_examples_run():
    cfkeras = importlib.import_module("cfkeras")
    results = doctest.testmod(imdb_cad, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 4 and results.failed == 0


def test_packaged_readme_names_source_and_files():
    readme = (PACKAGED_DIR / "README.md").read_text(encoding="utf-8")
    assert imdb_cad.UPSTREAM_COMMIT in readme
    assert "acmi-lab/counterfactually-augmented-data" in readme
    for split in SPLITS:
        assert f"sentiment/combined/paired/{split}_paired.tsv" in readme
        assert imdb_cad.SHA256[split] in readme


def test_packaged_data_is_small():
    assert sum(p.stat().st_size for p in PACKAGED_DIR.iterdir()) < 1_500_000
