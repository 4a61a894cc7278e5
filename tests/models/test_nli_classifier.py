"""Tests for `cfkeras.models.nli_classifier`: shapes, masking, the GS space
after batch norm, GS training with multi-class labels, and a behavioural check
of the multi-class contrast direction."""

import doctest
import json
import sys

import keras
import numpy as np
import pytest
from keras import ops

import cfkeras
from cfkeras.models import GradientSupervisionModel, split_at_layer
from cfkeras.models.nli_classifier import GS_LAYER, nli_classifier

VOCABULARY = 12
LENGTH = 5
SMALL = dict(embedding_dim=6, projection_dim=4, hidden_units=(8, 8, 8))


def small_model(output="sigmoid", **kwargs):
    return nli_classifier(VOCABULARY, output=output, **{**SMALL, **kwargs})


def ids(rows):
    """Token ids padded with 0 to LENGTH."""
    return np.array([row + [0] * (LENGTH - len(row)) for row in rows], dtype="int32")


# === Shapes and layers ===


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_shapes_and_outputs(output):
    keras.utils.set_random_seed(0)
    model = small_model(output)
    x = {"premise": ids([[1, 2], [3]]), "hypothesis": ids([[4], [5, 6, 7]])}
    y = keras.ops.convert_to_numpy(model(x))
    assert y.shape == (2, 3) and np.all((y > 0) & (y < 1))
    if output == "softmax":
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert model.get_layer(GS_LAYER).output.shape == (None, 2 * SMALL["projection_dim"])
    assert set(model.input) == {"premise", "hypothesis"}


def test_frozen_embedding_matrix_and_config():
    matrix = np.random.default_rng(0).normal(size=(VOCABULARY, 6)).astype("float32")
    model = small_model(embedding_matrix=matrix)
    embedding = model.get_layer("embedding")
    np.testing.assert_array_equal(embedding.get_weights()[0], matrix)
    assert not embedding.trainable
    assert all(w is not embedding.embeddings for w in model.trainable_weights)
    # The matrix is in the weights, not in the config; the config round-trips.
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    assert "weights" not in str(config["config"]["layers"][2]["config"])
    revived = keras.saving.deserialize_keras_object(config)
    revived.set_weights(model.get_weights())
    x = {"premise": ids([[1, 2]]), "hypothesis": ids([[3]])}
    np.testing.assert_allclose(
        ops.convert_to_numpy(revived(x)), ops.convert_to_numpy(model(x)), rtol=1e-6
    )
    two = small_model(share_projection=False, trainable_embedding=True)
    assert {"premise_projection", "hypothesis_projection"} <= {layer.name for layer in two.layers}
    assert two.get_layer("embedding").trainable


def test_bad_arguments():
    with pytest.raises(ValueError, match="output must be one of"):
        small_model(output="linear")
    with pytest.raises(ValueError, match=r"embedding_matrix has shape \(12, 5\)"):
        small_model(embedding_matrix=np.zeros((VOCABULARY, 5)))


def test_padding_does_not_change_the_output():
    keras.utils.set_random_seed(0)
    model = small_model()
    premise, hypothesis = [[3, 1, 4]], [[5, 9]]
    short = {"premise": np.array(premise, "int32"), "hypothesis": np.array(hypothesis, "int32")}
    padded = {"premise": ids(premise), "hypothesis": ids(hypothesis)}
    np.testing.assert_allclose(model(short), model(padded), rtol=1e-6)
    # ... while a real token does.
    other = {"premise": ids([[3, 1, 4, 1]]), "hypothesis": ids(hypothesis)}
    assert not np.allclose(model(other), model(padded))


# === The GS space ===


def test_gs_space_is_after_batch_norm_and_the_head_is_per_example():
    keras.utils.set_random_seed(0)
    model = small_model()
    encoder, head = split_at_layer(model, GS_LAYER)
    kinds = lambda m: {type(layer).__name__ for layer in m._flatten_layers()}  # noqa: E731
    assert "BatchNormalization" in kinds(encoder)
    assert "BatchNormalization" not in kinds(head)
    # In training mode each row of the head depends on its own row only.
    h = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    h_other = h.copy()
    h_other[1:] += 5.0
    np.testing.assert_allclose(head(h, training=True)[0], head(h_other, training=True)[0])
    gs = GradientSupervisionModel(model, gs_layer=GS_LAYER, task="multiclass")
    assert not gs._head_couples_batch


# === Training with gradient supervision ===


def token_pairs(n, seed=0):
    """Pairs of token-id sentences whose label is set by one hypothesis token.

    Tokens 1-3 mark the classes; the counterfactual swaps the marker for
    another class's, so the pair differs in one token of the hypothesis.
    """
    rng = np.random.default_rng(seed)
    y_i = rng.integers(0, 3, size=n)
    y_j = (y_i + rng.integers(1, 3, size=n)) % 3
    premise = rng.integers(4, VOCABULARY, size=(n, LENGTH)).astype("int32")
    premise[:, 3:] = 0
    hypothesis = rng.integers(4, VOCABULARY, size=(n, LENGTH)).astype("int32")
    hypothesis[:, 2:] = 0
    hypothesis_cf = hypothesis.copy()
    hypothesis[:, 2], hypothesis_cf[:, 2] = 1 + y_i, 1 + y_j
    x_i = {"premise": premise, "hypothesis": hypothesis}
    x_j = {"premise": premise.copy(), "hypothesis": hypothesis_cf}
    return x_i, x_j, y_i, y_j


@pytest.mark.parametrize(
    "output, loss, one_hot",
    [
        ("sigmoid", "binary_crossentropy", True),
        ("softmax", "sparse_categorical_crossentropy", False),
    ],
)
def test_gs_model_fits_with_multiclass_labels(output, loss, one_hot):
    keras.utils.set_random_seed(0)
    x_i, x_j, y_i, y_j = token_pairs(32)
    if one_hot:
        y_i, y_j = np.eye(3, dtype="float32")[y_i], np.eye(3, dtype="float32")[y_j]
    pairs = cfkeras.Pairs(x_i, x_j, y_i, y_j)
    gs = GradientSupervisionModel(
        small_model(output), gs_layer=GS_LAYER, gs_weight=0.5, task="multiclass"
    )
    gs.compile(optimizer=keras.optimizers.Adadelta(1.0, rho=0.9, epsilon=1e-6), loss=loss)
    history = gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=2, verbose=0).history
    for key in ("loss", "main_loss", "gs_loss", "gs_cosine", "pair_accuracy", "flip_rate"):
        assert np.all(np.isfinite(history[key])), key
    assert history["gs_supervised"][-1] == 1.0 and history["gs_skipped"][-1] == 0.0
    assert gs.predict(x_i, verbose=0).shape == (32, 3)


def zero_loss(y_true, y_pred):
    return ops.sum(y_pred, axis=-1) * 0.0


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_behaviour_multiclass_contrast_direction(output):
    """After GS-only training, a small step in the GS space from x_i toward
    x_j raises the log-odds of y_j against y_i, read from the outputs alone."""
    keras.utils.set_random_seed(0)
    model = small_model(output)
    gs = GradientSupervisionModel(model, gs_layer=GS_LAYER, gs_weight=1.0, task="multiclass")
    gs.compile(optimizer=keras.optimizers.Adam(0.02), loss=zero_loss, jit_compile=True)
    dataset = cfkeras.Pairs(*token_pairs(64)).to_dataset(batch_size=16, seed=0)
    history = gs.fit(dataset.repeat(), steps_per_epoch=200, epochs=1, verbose=0).history
    assert history["main_loss"][-1] == 0.0

    x_i, x_j, y_i, y_j = token_pairs(64, seed=1)  # fresh pairs
    encoder, head = split_at_layer(model, GS_LAYER)
    h_i = keras.ops.convert_to_numpy(encoder(x_i)).astype("float64")
    h_j = keras.ops.convert_to_numpy(encoder(x_j)).astype("float64")
    step = lambda eps: keras.ops.convert_to_numpy(  # noqa: E731
        head(h_i + eps * (h_j - h_i))
    ).astype("float64")
    before, after = step(0.0), step(1e-2)
    rows = np.arange(len(y_i))

    def score(p):
        # Sigmoid: each class's logit. Softmax: log-probabilities, whose
        # differences are logit differences.
        return np.log(p) - np.log1p(-p) if output == "sigmoid" else np.log(p)

    contrast = lambda p: score(p)[rows, y_j] - score(p)[rows, y_i]  # noqa: E731
    raised = contrast(after) - contrast(before) > 0
    assert raised.mean() > 0.9, raised.mean()


def test_docstring_example():
    # `cfkeras.models.nli_classifier` is the function: take the module itself.
    module = sys.modules["cfkeras.models.nli_classifier"]
    results = doctest.testmod(module, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 4 and results.failed == 0
