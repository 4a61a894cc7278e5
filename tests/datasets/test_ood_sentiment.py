"""Tests for `cfkeras.datasets.ood_sentiment`: the out-of-domain sentiment test sets."""

import numpy as np
import pytest

from cfkeras.datasets import load_ood_sentiment
from cfkeras.datasets.ood_sentiment import OOD_DIR_ENV

HEADER = "Sentiment\tText\n"
# From ../shared/data/ood/README.md: rows, positives, negatives.
COUNTS = {"amazon": (2000, 1000, 1000), "twitter": (1400, 704, 696), "yelp": (3000, 1500, 1500)}


@pytest.fixture(autouse=True)
def _no_ood_dir_env(monkeypatch):
    monkeypatch.delenv(OOD_DIR_ENV, raising=False)


def write(root, name, content, encoding="utf-8"):
    path = root / name / "test.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode(encoding) if isinstance(content, str) else content
    path.write_bytes(data)
    return root


# === The shared copies ===


@pytest.mark.parametrize("name", list(COUNTS))
def test_rows_and_class_balance(shared_dir, name):
    texts, labels = load_ood_sentiment(name, shared_dir / "data" / "ood")
    rows, positive, negative = COUNTS[name]
    assert texts.shape == labels.shape == (rows,)
    assert texts.dtype == object and labels.dtype == np.int32
    assert (int((labels == 1).sum()), int((labels == 0).sum())) == (positive, negative)
    assert all(isinstance(t, str) and t for t in texts)
    assert not any("\n" in t or "\t" in t for t in texts)


def test_amazon_order_per_readme(shared_dir):
    # 250 positive then 250 negative per domain: books, dvd, electronics, kitchen.
    _, labels = load_ood_sentiment("amazon", shared_dir / "data" / "ood")
    expected = np.tile(np.repeat([1, 0], 250), 4)
    np.testing.assert_array_equal(labels, expected)


def test_twitter_known_rows_and_env_var(shared_dir, monkeypatch):
    monkeypatch.setenv(OOD_DIR_ENV, str(shared_dir / "data" / "ood"))
    texts, labels = load_ood_sentiment("twitter")
    assert texts[0] == "Ariana Grande KIIS FM Yours Truly CD listening party in Burbank "
    assert labels[0] == 1
    # The file has CRLF line ends (its README says LF): no text keeps a CR.
    assert not any("\r" in t for t in texts)
    duplicate = np.flatnonzero(texts == "I liked a @YouTube video ")
    assert len(duplicate) == 2 and labels[duplicate].tolist() == [1, 1]


# === Reading and validation on tiny files ===


def test_quoting_is_undone_and_labels_mapped(tmp_path):
    write(tmp_path, "yelp", HEADER + 'Positive\t"A ""great"" film"\nNegative\tdull, "really"\n')
    texts, labels = load_ood_sentiment("yelp", tmp_path)
    assert texts.tolist() == ['A "great" film', 'dull, "really"']
    assert labels.tolist() == [1, 0]


def test_crlf_line_ends_read_like_lf(tmp_path):
    write(tmp_path / "lf", "twitter", HEADER + 'Positive\ta b \nNegative\t"c ""d"""\n')
    write(
        tmp_path / "crlf", "twitter", 'Sentiment\tText\r\nPositive\ta b \r\nNegative\t"c ""d"""\r\n'
    )
    lf, crlf = (
        load_ood_sentiment("twitter", tmp_path / "lf"),
        load_ood_sentiment("twitter", tmp_path / "crlf"),
    )
    assert lf[0].tolist() == crlf[0].tolist() == ["a b ", 'c "d"']
    assert lf[1].tolist() == crlf[1].tolist() == [1, 0]


def test_data_dir_argument_overrides_env_var(tmp_path, monkeypatch):
    write(tmp_path / "env", "amazon", HEADER + "Negative\tenv\n")
    write(tmp_path / "arg", "amazon", HEADER + "Positive\targ\n")
    monkeypatch.setenv(OOD_DIR_ENV, str(tmp_path / "env"))
    assert load_ood_sentiment("amazon")[0].tolist() == ["env"]
    assert load_ood_sentiment("amazon", str(tmp_path / "arg"))[0].tolist() == ["arg"]


def test_no_directory_is_a_clear_error():
    with pytest.raises(ValueError, match=f"pass `data_dir` or set \\${OOD_DIR_ENV}"):
        load_ood_sentiment("yelp")


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="twitter/test.tsv"):
        load_ood_sentiment("twitter", tmp_path)
    with pytest.raises(ValueError, match="Unknown out-of-domain set 'imdb'"):
        load_ood_sentiment("imdb", tmp_path)


MALFORMED = {
    "empty file": ("", "expected the header"),
    "wrong header": ("Label\tText\nPositive\ta\n", "expected the header"),
    "header only": (HEADER, "contains no records"),
    "three fields": (HEADER + "Positive\ta\tb\n", "line 2: expected 2 tab-separated fields"),
    "one field": (HEADER + "Positive\na\n", "line 2: expected 2"),
    "bad label": (HEADER + "Positive\ta\nneutral\tb\n", "line 3: label 'neutral'"),
    "record over two lines": (
        HEADER + 'Positive\t"a\nb"\nNegative\tc\n',
        "spans lines 2-3; every record must be on one line",
    ),
    "unbalanced quote": (HEADER + 'Positive\t"a\nNegative\tb\n', "malformed TSV"),
    "text after a closing quote": (HEADER + 'Positive\t"a"b\n', "malformed TSV"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_raise(tmp_path, case):
    content, message = MALFORMED[case]
    write(tmp_path, "twitter", content)
    with pytest.raises(ValueError, match=message):
        load_ood_sentiment("twitter", tmp_path)


def test_invalid_utf8_raises(tmp_path):
    write(tmp_path, "twitter", HEADER.encode() + b"Positive\t\xff\xfe\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_ood_sentiment("twitter", tmp_path)
