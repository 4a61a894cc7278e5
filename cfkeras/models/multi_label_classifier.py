"""The paper's multi-label MLP (Teney et al. 2020, section 4.2, supplement B)."""

import keras

from cfkeras.layers import LearnedFill

POOLED = "pooled_features"


def multi_label_classifier(
    num_labels=80,
    feature_dim=2048,
    num_features=None,
    hidden_units=(64, 64, 64),
    learned_fill=False,
    logits=False,
    name="multi_label_mlp",
):
    """Image features -> 3 x 64 ReLU -> one sigmoid per label.

    The COCO model of the paper: a 2048-d pooled image feature, a 3-layer ReLU
    MLP of width 64, a linear/sigmoid output per label (train it with binary
    cross-entropy and `keras.optimizers.Adadelta`, batches of 512).

    With `num_features`, the input is a set of `num_features` feature
    vectors (e.g. feature-map cells, which `cfkeras.masking` masks) averaged
    into one vector by the layer named `POOLED` ("pooled_features"), the
    paper's pooled 2048-d vector and the GS space (`gs_layer=POOLED`).
    Without it the input is that vector itself (`gs_layer=None`).

    Args:
        num_labels: number of labels (COCO: 80).
        feature_dim: width of a feature vector (the paper: 2048).
        num_features: optional number of feature vectors to average.
        hidden_units: widths of the ReLU layers.
        learned_fill: with `num_features`, inputs `{"features", "mask"}` and a
            `cfkeras.layers.LearnedFill` before the pooling (for
            `cfkeras.masking.FeatureMasking(fill="learned")`).
        logits: output logits (compile with `from_logits=True`) instead of
            probabilities.
        name: model name.

    Example:

    >>> model = cfkeras.models.multi_label_classifier(10, feature_dim=32, num_features=64)
    >>> gs = cfkeras.GradientSupervisionModel(model, gs_layer="pooled_features",
    ...                                       multi_label_mode="per_label")
    """
    if learned_fill and num_features is None:
        raise ValueError("learned_fill needs num_features (a set of feature vectors).")
    if num_features is None:
        inputs = keras.Input((feature_dim,), name="features")
        h = inputs
    else:
        features = keras.Input((num_features, feature_dim), name="features")
        inputs, h = features, features
        if learned_fill:
            mask = keras.Input((num_features,), name="mask")
            inputs = {"features": features, "mask": mask}
            h = LearnedFill(name="learned_fill")(inputs)
        h = keras.layers.GlobalAveragePooling1D(name=POOLED)(h)
    for k, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{k}")(h)
    activation = None if logits else "sigmoid"
    outputs = keras.layers.Dense(num_labels, activation=activation, name="labels")(h)
    return keras.Model(inputs, outputs, name=name)
