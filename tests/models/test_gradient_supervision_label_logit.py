"""`GradientSupervisionModel(gradient_of="label_logit")`: the label-blind GS
term of the paper's random-relations control, checked by hand with NumPy on
linear models (the input gradient of a logit of a linear model is its weight
column), equal-label pairs included."""

import json

import keras
import numpy as np
import pytest

from cfkeras.models import GradientSupervisionModel
from cfkeras.pairs import make_pair


def _cos(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def linear(weights, activation):
    model = keras.Sequential(
        [keras.Input((weights.shape[0],)), keras.layers.Dense(weights.shape[1], activation)]
    )
    model.layers[-1].set_weights([weights, np.zeros(weights.shape[1])])
    return model


def gs_loss(gs, x_i, x_j, y_i, y_j, loss="mse"):
    gs.compile(loss=loss)  # any main loss: only the GS term is read
    _, stats = gs.compute_pair_losses(make_pair(x_i, x_j), make_pair(y_i, y_j))
    mean, count = stats["gs_loss"]
    return float(mean), float(count)


rng = np.random.default_rng(0)
X_I = rng.normal(size=(6, 4)).astype("float32")
X_J = rng.normal(size=(6, 4)).astype("float32")
STEP = np.concatenate([X_J - X_I, X_I - X_J])  # every row's x_j - x_i, both directions


def test_binary_aligns_the_gradient_of_f_for_every_pair_equal_labels_included():
    w = rng.normal(size=(4, 1)).astype("float32")
    y_i = np.array([0, 1, 0, 1, 1, 0], "float32")
    y_j = np.array([0, 1, 1, 0, 1, 0], "float32")  # four pairs of equal labels
    blind = GradientSupervisionModel(linear(w, "sigmoid"), gradient_of="label_logit")
    mean, count = gs_loss(blind, X_I, X_J, y_i, y_j)
    expected = np.mean(1 - _cos(np.tile(w[:, 0], (12, 1)), STEP))  # d f / dx = w at every row
    assert count == 12
    np.testing.assert_allclose(mean, expected, rtol=1e-5)
    # The label-aware contrast supervises only the two pairs whose labels
    # differ, with the sign of y_j - y_i.
    aware = GradientSupervisionModel(linear(w, "sigmoid"))
    mean, count = gs_loss(aware, X_I, X_J, y_i, y_j)
    differ = np.array([2, 3, 8, 9])
    sign = np.concatenate([y_j - y_i, y_i - y_j])[differ, None]
    assert count == 4
    np.testing.assert_allclose(mean, np.mean(1 - _cos(sign * w[:, 0], STEP[differ])), rtol=1e-5)


def test_multiclass_aligns_the_gradient_of_the_own_label_logit():
    w = rng.normal(size=(4, 3)).astype("float32")
    y_i = np.array([0, 1, 2, 2, 1, 0])
    y_j = np.array([0, 2, 2, 1, 1, 0])  # equal labels in pairs 0, 2, 4, 5
    blind = GradientSupervisionModel(linear(w, "softmax"), gradient_of="label_logit")
    mean, count = gs_loss(blind, X_I, X_J, y_i, y_j, "sparse_categorical_crossentropy")
    own = np.concatenate([y_i, y_j])
    gradients = w[:, own].T  # d f_{y_r} / dx at row r: the column of its own label
    assert count == 12
    np.testing.assert_allclose(mean, np.mean(1 - _cos(gradients, STEP)), rtol=1e-5)
    # One-hot labels give the same term.
    one_hot = np.eye(3, dtype="float32")
    np.testing.assert_allclose(
        gs_loss(blind, X_I, X_J, one_hot[y_i], one_hot[y_j], "categorical_crossentropy")[0],
        mean,
        rtol=1e-6,
    )


def test_trains_and_round_trips_through_its_config():
    keras.utils.set_random_seed(0)
    gs = GradientSupervisionModel(
        linear(rng.normal(size=(4, 1)).astype("float32"), "sigmoid"),
        gs_weight=0.5,
        gradient_of="label_logit",
    )
    config = json.loads(json.dumps(gs.get_config()))
    assert config["gradient_of"] == "label_logit"
    revived = GradientSupervisionModel.from_config(config)
    assert revived.gradient_of == "label_logit"
    assert (
        GradientSupervisionModel.from_config(
            json.loads(
                json.dumps(GradientSupervisionModel(linear(np.ones((4, 1)), None)).get_config())
            )
        ).gradient_of
        == "contrast"
    )


def test_rejects_unknown_values_and_multi_label():
    with pytest.raises(ValueError, match="gradient_of"):
        GradientSupervisionModel(linear(np.ones((4, 1)), None), gradient_of="logits")
    with pytest.raises(ValueError, match="multi-label"):
        GradientSupervisionModel(
            linear(np.ones((4, 3)), "sigmoid"), gradient_of="label_logit", task="multilabel"
        )


def _gs_loss_and_weight_gradient(gs, y_i, y_j):
    import tensorflow as tf

    gs.compile(loss="mse")
    with tf.GradientTape() as tape:
        _, stats = gs.compute_pair_losses(make_pair(X_I, X_J), make_pair(y_i, y_j), training=True)
        mean, _ = stats["gs_loss"]
    gradients = tape.gradient(mean, gs.trainable_variables)
    norm = sum(float(np.sum(np.square(g))) for g in gradients if g is not None)
    return float(mean), np.sqrt(norm)


def test_binary_label_blind_term_is_constant_on_a_linear_head_in_both_directions():
    # d f / dx = w at x_i and at x_j, and the two steps are opposite: the
    # terms of a pair cancel, cos(w, d) + cos(w, -d) = 0, so the loss is
    # exactly 1 and trains nothing (the IMDb `gs_random_logit` row).
    w = rng.normal(size=(4, 1)).astype("float32")
    y_i = np.array([0, 1, 0, 1, 1, 0], "float32")
    y_j = np.array([0, 1, 1, 0, 1, 0], "float32")
    both = GradientSupervisionModel(linear(w, "sigmoid"), gradient_of="label_logit")
    mean, gradient = _gs_loss_and_weight_gradient(both, y_i, y_j)
    np.testing.assert_allclose(mean, 1.0, atol=1e-6)
    assert gradient < 1e-6
    # One direction: x_i -> x_j only, a real term with a real gradient.
    one_way = GradientSupervisionModel(
        linear(w, "sigmoid"), gradient_of="label_logit", both_directions=False
    )
    mean, gradient = _gs_loss_and_weight_gradient(one_way, y_i, y_j)
    expected = np.mean(1 - _cos(np.tile(w[:, 0], (6, 1)), X_J - X_I))
    np.testing.assert_allclose(mean, expected, rtol=1e-5)
    assert abs(mean - 1.0) > 1e-2 and gradient > 1e-3
    # A non-linear head: the gradients at x_i and x_j differ, no cancellation.
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1, "sigmoid")]
    )
    mean, gradient = _gs_loss_and_weight_gradient(
        GradientSupervisionModel(mlp, gradient_of="label_logit"), y_i, y_j
    )
    assert abs(mean - 1.0) > 1e-3 and gradient > 1e-3
