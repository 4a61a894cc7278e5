"""Tests for `cfkeras.losses`: contrast weights and the cosine alignment.

Expectations are computed with NumPy, independently of the library.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras import losses
from cfkeras.losses import contrast_weights, cosine_alignment

RTOL = {"float32": 1e-5, "float64": 1e-12}


def np_cosine_loss(g, x, x_cf):
    """`1 - cos(g, x_cf - x)` per example, on flattened rows, in float64."""
    g = np.asarray(g, np.float64).reshape(len(g), -1)
    t = (np.asarray(x_cf, np.float64) - np.asarray(x, np.float64)).reshape(len(g), -1)
    cos = np.sum(g * t, -1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(t, axis=-1))
    return 1.0 - cos


# === contrast_weights ===


@pytest.mark.parametrize("class_selection", ["changed", "ground_truth"])
@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_contrast_weights_binary(class_selection, shape):
    y = np.array([1, 0, 1, 0]).reshape(shape)
    y_cf = np.array([0, 1, 1, 0]).reshape(shape)
    weights = np.asarray(contrast_weights(y, y_cf, 1, class_selection))
    # One logit: 1 -> 0 lowers it (-1), 0 -> 1 raises it (+1); both selections
    # coincide (the negative class's logit is -f).
    np.testing.assert_array_equal(weights, [[-1.0], [1.0], [0.0], [0.0]])
    assert weights.shape == (4, 1)


@pytest.mark.parametrize("form", ["sparse", "sparse_column", "one_hot"])
def test_contrast_weights_softmax(form):
    y = np.array([0, 1, 2, 1])
    y_cf = np.array([2, 0, 2, 2])
    eye = np.eye(3, dtype=np.float32)
    encode = {
        "sparse": lambda v: v,
        "sparse_column": lambda v: v[:, None],
        "one_hot": lambda v: eye[v],
    }[form]
    changed = np.asarray(contrast_weights(encode(y), encode(y_cf), 3, "changed"))
    np.testing.assert_array_equal(changed, eye[y_cf] - eye[y])
    # z = f_{y_cf} - f_y: +1 on the counterfactual's class, -1 on the own one.
    np.testing.assert_array_equal(changed[0], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(changed[2], [0.0, 0.0, 0.0])

    ground_truth = np.asarray(contrast_weights(encode(y), encode(y_cf), 3, "ground_truth"))
    # Only the classes positive at x: z = -f_y, and nothing for equal labels.
    expected = -eye[y] * (y != y_cf)[:, None]
    np.testing.assert_array_equal(ground_truth, expected)


def test_contrast_weights_class_weights_multiply():
    y, y_cf = np.array([0, 1, 2]), np.array([1, 2, 0])
    class_weights = [0.5, 2.0, 3.0]
    eye = np.eye(3)
    for selection in ("changed", "ground_truth"):
        plain = np.asarray(contrast_weights(y, y_cf, 3, selection))
        weighted = np.asarray(contrast_weights(y, y_cf, 3, selection, class_weights))
        np.testing.assert_allclose(weighted, plain * np.array(class_weights))
    weighted = np.asarray(contrast_weights(y, y_cf, 3, "changed", class_weights))
    np.testing.assert_allclose(weighted, (eye[y_cf] - eye[y]) * class_weights)


def test_contrast_weights_multi_label():
    y = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    y_cf = np.array([[0, 0, 1, 1], [0, 0, 0, 1]])
    changed = np.asarray(contrast_weights(y, y_cf, 4, "changed"))
    np.testing.assert_array_equal(changed, [[-1, 0, 0, 1], [0, 0, 0, 0]])
    ground_truth = np.asarray(contrast_weights(y, y_cf, 4, "ground_truth"))
    np.testing.assert_array_equal(ground_truth, [[-1, 0, 0, 0], [0, 0, 0, 0]])


def test_contrast_weights_all_zero_counterfactual():
    # The VQA-style counterfactual: no answer is right at x_cf.
    y = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    y_cf = np.zeros((2, 3))
    for selection in ("changed", "ground_truth"):
        weights = np.asarray(contrast_weights(y, y_cf, 3, selection))
        np.testing.assert_array_equal(weights, [[0, -1, 0], [-1, -1, 0]])


def test_contrast_weights_rejects_unknown_selection():
    with pytest.raises(ValueError, match="class_selection"):
        contrast_weights(np.array([0]), np.array([1]), 2, "counterfactual_only")


# === cosine_alignment ===


def gradient_supervision(g, x, x_cf, **kwargs):
    """The per-example GS loss as the model computes it: `1 - cos` where valid."""
    cos, valid = cosine_alignment(g, x, x_cf, **kwargs)
    return keras.ops.where(valid, 1.0 - cos, keras.ops.zeros_like(cos))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_supervision_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    g, x, x_cf = (rng.normal(size=(16, 5)).astype(dtype) for _ in range(3))
    loss = gradient_supervision(g, x, x_cf)
    cos, valid = cosine_alignment(g, x, x_cf)
    assert keras.backend.standardize_dtype(loss.dtype) == dtype
    assert keras.backend.standardize_dtype(cos.dtype) == dtype
    assert loss.shape == (16,)
    expected = np_cosine_loss(g, x, x_cf)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(np.asarray(cos), 1 - expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    assert np.all(np.asarray(valid))


def test_gradient_supervision_half_precision_is_computed_in_float32():
    rng = np.random.default_rng(1)
    g, x, x_cf = (rng.normal(size=(4, 3)).astype("float16") for _ in range(3))
    loss = gradient_supervision(g, x, x_cf)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(loss), np_cosine_loss(g, x, x_cf), rtol=1e-5)


def test_gradient_supervision_aligned_and_opposite():
    g = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    x = np.zeros((3, 3))
    x_cf = np.array([[2.0, 4.0, 0.0], [-1.0, -2.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(gradient_supervision(g, x, x_cf)), [0, 2, 1], atol=1e-7)


def test_gradient_supervision_flattens_rank_3():
    rng = np.random.default_rng(2)
    g, x, x_cf = (rng.normal(size=(4, 3, 2)) for _ in range(3))
    loss = np.asarray(gradient_supervision(g, x, x_cf))
    flat = np.asarray(gradient_supervision(g.reshape(4, 6), x.reshape(4, 6), x_cf.reshape(4, 6)))
    np.testing.assert_allclose(loss, flat, rtol=1e-12)
    np.testing.assert_allclose(loss, np_cosine_loss(g, x, x_cf), rtol=1e-12)


def _degenerate_batch(dtype):
    """Rows: identical, near-identical at norm 1e6, zero gradient, valid at
    norm 1e6 (relative distance 1e-3), an ordinary valid row."""
    g = np.array(
        [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0], [1.0, -1.0, 0.5]]
    )
    x = np.array(
        [[1.0, 1.0, 1.0], [1e6, 0.0, 0.0], [0.0, 1.0, 0.0], [1e6, 0.0, 0.0], [0.0, 0.0, 1.0]]
    )
    x_cf = x.copy()
    x_cf[1, 1] += 0.1  # |t| / |x| = 1e-7 < 1e-5: skipped
    x_cf[2, 0] += 1.0  # zero gradient: skipped
    x_cf[3, 1] += 1e3  # |t| / |x| = 1e-3: supervised
    x_cf[4] = [2.0, -1.0, 0.0]
    return g.astype(dtype), x.astype(dtype), x_cf.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_degenerate_points_give_zero_loss_and_finite_gradients(dtype):
    g, x, x_cf = (tf.constant(a) for a in _degenerate_batch(dtype))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([g, x, x_cf])
        cos, valid = cosine_alignment(g, x, x_cf)
        loss = gradient_supervision(g, x, x_cf)
        total = tf.reduce_sum(loss) + tf.reduce_sum(cos)
    np.testing.assert_array_equal(np.asarray(valid), [False, False, False, True, True])
    loss = np.asarray(loss)
    np.testing.assert_array_equal(loss[:3], 0.0)
    np.testing.assert_array_equal(np.asarray(cos)[:3], 0.0)
    expected = np_cosine_loss(g.numpy()[3:], x.numpy()[3:], x_cf.numpy()[3:])
    np.testing.assert_allclose(loss[3:], expected, rtol=1e-5)
    assert loss[3] > 0.1  # not trivially 0 at the large norm
    for tensor in (g, x, x_cf):
        gradient = tape.gradient(total, tensor).numpy()
        assert np.all(np.isfinite(gradient))
        np.testing.assert_array_equal(gradient[:3], 0.0)  # invalid rows: no gradient


def test_degenerate_rows_do_not_affect_valid_gradients():
    # d(1 - cos)/dg = -(t / (|g||t|) - cos g / |g|^2), computed by hand.
    g, x, x_cf = (tf.constant(a) for a in _degenerate_batch("float64"))
    with tf.GradientTape() as tape:
        tape.watch(g)
        loss = tf.reduce_sum(gradient_supervision(g, x, x_cf))
    gradient = tape.gradient(loss, g).numpy()
    gn, t = g.numpy()[3:], (x_cf - x).numpy()[3:]
    ng, nt = np.linalg.norm(gn, axis=-1, keepdims=True), np.linalg.norm(t, axis=-1, keepdims=True)
    cos = np.sum(gn * t, -1, keepdims=True) / (ng * nt)
    np.testing.assert_allclose(gradient[3:], -(t / (ng * nt) - cos * gn / ng**2), rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_min_relative_distance_is_scale_invariant(scale):
    g = np.array([[0.3, 1.0, -0.2], [0.3, 1.0, -0.2]])
    x = np.array([[scale, 0.0, 0.0], [scale, 0.0, 0.0]])
    x_cf = x.copy()
    x_cf[0, 1] = 1e-7 * scale
    x_cf[1, 1] = 1e-3 * scale
    for dtype in ("float32", "float64"):
        _, valid = cosine_alignment(g.astype(dtype), x.astype(dtype), x_cf.astype(dtype))
        np.testing.assert_array_equal(np.asarray(valid), [False, True])
    # A larger threshold skips the second pair too; a smaller one keeps the first.
    _, valid = cosine_alignment(g, x, x_cf, min_relative_distance=1e-2)
    np.testing.assert_array_equal(np.asarray(valid), [False, False])
    _, valid = cosine_alignment(g, x, x_cf, min_relative_distance=1e-8)
    np.testing.assert_array_equal(np.asarray(valid), [True, True])


def test_given_squared_norms_are_used_for_the_identity_test():
    g = np.array([[0.3, 1.0, -0.2], [0.3, 1.0, -0.2]])
    x = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    x_cf = x + np.array([[0.0, 1e-3, 0.0], [0.0, 1e-3, 0.0]])
    norms = (np.sum(x * x, -1), np.sum(x_cf * x_cf, -1))
    cos, valid = cosine_alignment(g, x, x_cf, squared_norms=norms)
    expected_cos, expected_valid = cosine_alignment(g, x, x_cf)
    np.testing.assert_array_equal(np.asarray(valid), np.asarray(expected_valid))
    np.testing.assert_allclose(np.asarray(cos), np.asarray(expected_cos), rtol=1e-12)
    # A reference norm 1e8 times larger makes the 1e-3 step "identical".
    _, valid = cosine_alignment(g, x, x_cf, squared_norms=(norms[0] * 1e8, norms[1]))
    np.testing.assert_array_equal(np.asarray(valid), [False, False])


def test_docstring_examples():
    result = doctest.testmod(losses, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert result.attempted >= 1
    assert result.failed == 0
