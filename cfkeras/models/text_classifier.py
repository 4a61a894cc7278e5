"""The papers' bag-of-embeddings text classifier (Teney et al. 2020, supplement C)."""

import keras

from cfkeras.layers import MaskedMean

GS_LAYER = "mean_embedding"


def bag_of_embeddings_classifier(
    vocabulary_size,
    embedding_dim=50,
    num_classes=1,
    sequence_length=None,
    embeddings_initializer="uniform",
    name="bag_of_embeddings",
):
    """Token ids -> embedding -> mean over the true length -> linear output.

    The model of the paper's sentiment experiments: word embeddings (id 0 is
    padding) averaged over the non-padding tokens, then a linear layer with a
    sigmoid (one class) or softmax output. The averaged embedding is the
    layer named `GS_LAYER` ("mean_embedding"), the paper's GS space.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        embedding_dim: embedding width (the paper: 50).
        num_classes: 1 for a binary sigmoid output, more for softmax.
        sequence_length: fixed input length, or `None`.
        embeddings_initializer: initializer of the word embeddings: Keras's
            `"uniform"` (±0.05, the default) or e.g. `"random_normal"`
            with `keras.initializers.RandomNormal(stddev=1.0)` for N(0, 1)
            (PyTorch's `nn.Embedding` default, which the paper's code
            likely used).
        name: model name.

    Returns:
        A functional `keras.Model` mapping int token ids to probabilities.

    Example:

    >>> model = cfkeras.models.bag_of_embeddings_classifier(1000)
    >>> gs = cfkeras.GradientSupervisionModel(model, gs_layer="mean_embedding")
    """
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    embedded = keras.layers.Embedding(
        vocabulary_size,
        embedding_dim,
        embeddings_initializer=embeddings_initializer,
        mask_zero=True,
        name="embedding",
    )(token_ids)
    mean = MaskedMean(name=GS_LAYER)(embedded)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = keras.layers.Dense(num_classes, activation=activation, name="output")(mean)
    return keras.Model(token_ids, outputs, name=name)
