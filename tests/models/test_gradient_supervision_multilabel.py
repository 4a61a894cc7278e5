"""Multi-label GS on a linear model with known weights: the gradient
direction of `"sum"` and `"per_label"` computed by hand, and the task read
from the compiled loss for a model that outputs logits."""

import keras
import numpy as np
import pytest

import cfkeras
from cfkeras.models import GradientSupervisionModel
from cfkeras.pairs import make_pair

W = np.array(
    [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 3.0, -1.0], [-2.0, 0.5, 1.0]], "float32"
)  # (features 4, labels 3): logit_c = x . W[:, c] + b_c
Y_I = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], "float32")
Y_J = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], "float32")  # 1, 3 and 2 labels change


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _linear(activation=None):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation=activation)])
    model.layers[-1].set_weights([W, np.array([0.1, -0.2, 0.3], "float32")])
    return model


def _pairs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 3, 4)).astype("float32")


@pytest.mark.parametrize("mode", ["sum", "per_label"])
@pytest.mark.parametrize("output", ["logits", "sigmoid"])
def test_multi_label_gradient_direction_hand_computed(mode, output):
    x_i, x_j = _pairs()
    if output == "logits":
        model, loss = _linear(), keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        model, loss = _linear("sigmoid"), "binary_crossentropy"
    gs = GradientSupervisionModel(model, gs_weight=1.0, multi_label_mode=mode)
    gs.compile(optimizer="sgd", loss=loss)
    _, stats = gs.compute_pair_losses(make_pair(x_i, x_j), make_pair(Y_I, Y_J))

    expected = []
    for k in range(3):
        w = Y_J[k] - Y_I[k]  # the contrast weights of pair k, forward direction
        step = x_j[k] - x_i[k]
        if mode == "sum":
            expected.append(_cos(W @ w, step))
        else:
            changed = np.flatnonzero(w)
            expected.append(np.mean([_cos(np.sign(w[c]) * W[:, c], step) for c in changed]))
    cosines = np.asarray(stats["gs_cosine_per_point"])
    # The backward direction (x_j -> x_i, labels Y_I - Y_J) has the same cosines.
    np.testing.assert_allclose(cosines[:3], expected, rtol=1e-5)
    np.testing.assert_allclose(cosines[3:], expected, rtol=1e-5)
    mean, count = stats["gs_loss"]
    assert float(count) == 6
    assert float(mean) == pytest.approx(1 - np.mean(expected), rel=1e-5)
    if mode == "per_label":  # the modes differ where several labels change
        sum_cos = _cos(W @ (Y_J[1] - Y_I[1]), x_j[1] - x_i[1])
        assert abs(expected[1] - sum_cos) > 1e-3


@pytest.mark.parametrize(
    "loss, task",
    [
        (keras.losses.BinaryCrossentropy(from_logits=True), "multilabel"),
        ("binary_crossentropy", "multilabel"),
        (keras.losses.binary_focal_crossentropy, "multilabel"),
        (keras.losses.CategoricalCrossentropy(from_logits=True), "multiclass"),
    ],
)
def test_task_of_a_logits_model_follows_the_compiled_loss(loss, task):
    x_i, x_j = _pairs()
    gs = GradientSupervisionModel(_linear(), multi_label_mode="per_label")
    gs.compile(optimizer="sgd", loss=loss)
    h = np.concatenate([x_i, x_j])
    term = gs.gradient_supervision_term(keras.ops.convert_to_tensor(h), np.concatenate([Y_I, Y_J]))
    assert term.task == task
    # Multi-label pair decisions: every label thresholded at logit 0.
    if task == "multilabel":
        _, stats = gs.compute_pair_losses(make_pair(x_i, x_j), make_pair(Y_I, Y_J))
        logits = h @ W + np.array([0.1, -0.2, 0.3])
        flipped = np.any((logits[:3] > 0) != (logits[3:] > 0), axis=1)
        np.testing.assert_array_equal(np.asarray(stats["flip_rate"]), flipped.astype("float32"))


def test_multi_label_classifier_shapes_and_gs_layer():
    model = cfkeras.models.multi_label_classifier(5, feature_dim=6, num_features=4)
    assert model.output_shape == (None, 5)
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        64,
        64,
        64,
        5,
    ]
    gs = GradientSupervisionModel(model, gs_layer="pooled_features", multi_label_mode="per_label")
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    np.testing.assert_allclose(gs(x), model(x), rtol=1e-6)
    paper = cfkeras.models.multi_label_classifier()
    assert paper.input_shape == (None, 2048) and paper.output_shape == (None, 80)
    with pytest.raises(ValueError, match="learned_fill needs num_features"):
        cfkeras.models.multi_label_classifier(3, learned_fill=True)
