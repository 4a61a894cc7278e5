"""Degenerate batches for `GradientSupervisionModel`: no NaN or Inf anywhere.

Every case checks, on one tiny batch of pairs,

* the total loss of `compute_pair_losses` and its gradient with respect to
  every trainable weight (a second-order gradient through the input-gradient
  tape) are finite;
* `gs_supervised` / `gs_skipped` count exactly the points they should
  (`2 * pairs` points: both directions are supervised by default);
* a real `fit` step compiled with XLA (`jit_compile=True`) reports finite
  losses, the same counts, and leaves finite weights.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfkeras.datasets import load_imdb_pairs
from cfkeras.models import GradientSupervisionModel, bag_of_embeddings_classifier
from cfkeras.pairs import make_pair

RNG = np.random.default_rng(0)

# XLA compilation dominates the cost of these tests: a model is compiled once
# per configuration and reused, its weights reset to the initial ones.
_COMPILED = {}


def compiled(key, build, loss="binary_crossentropy", weights=None):
    """A `GradientSupervisionModel` compiled with XLA, with freshly reset weights.

    `build()` makes it the first time; later calls reuse it (the same batch
    structure then reuses the compiled step) after `set_weights(weights or
    the initial weights)`.
    """
    if key not in _COMPILED:
        gs = build()
        gs.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=True)
        _COMPILED[key] = (gs, gs.get_weights())
    gs, initial = _COMPILED[key]
    gs.set_weights(initial if weights is None else weights)
    return gs


def _dense(d=4, width=8, head_initializer="glorot_uniform", num_classes=1):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((d,))
    hidden = keras.layers.Dense(width, activation="tanh", name="hidden")(inputs)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = keras.layers.Dense(
        num_classes, activation=activation, kernel_initializer=head_initializer, name="output"
    )(hidden)
    return keras.Model(inputs, outputs)


def _text(vocabulary=20, length=6):
    keras.utils.set_random_seed(0)
    return bag_of_embeddings_classifier(vocabulary, embedding_dim=4, sequence_length=length)


def _dense_gs():
    return GradientSupervisionModel(_dense(), gs_layer="hidden")


def _text_gs(vocabulary=20, length=6):
    return GradientSupervisionModel(_text(vocabulary, length), gs_layer="mean_embedding")


def _linear_gs():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    return GradientSupervisionModel(model, gs_layer=None)


def _finite(value):
    if isinstance(value, tf.IndexedSlices):
        value = tf.convert_to_tensor(value)
    return bool(np.all(np.isfinite(np.asarray(value))))


def _batch(x_i, x_j, y_i, y_j, sample_weight=None):
    batch = (make_pair(x_i, x_j), make_pair(y_i, y_j))
    return batch if sample_weight is None else batch + (sample_weight,)


def check(gs, batch, supervised, skipped, active=None):
    """Loss, parameter gradients and an XLA fit step are finite; counts are exact.

    `gs` is compiled (`compiled`). `active` is the number of points with a
    non-zero weight (the denominator of the `gs_supervised` fraction); all `2n`
    by default.
    """
    x, y, *weight = batch
    weight = weight[0] if weight else None
    with tf.GradientTape() as tape:
        total, stats = gs.compute_pair_losses(x, y, weight, training=True)
    gradients = tape.gradient(total, gs.trainable_weights)
    assert _finite(total), float(total)
    for variable, gradient in zip(gs.trainable_weights, gradients):
        assert gradient is not None, variable.path
        assert _finite(gradient), variable.path
    gs_mean, gs_count = stats["gs_loss"]
    assert _finite(gs_mean) and _finite(stats["gs_cosine"][0])
    assert float(np.sum(stats["gs_supervised"])) == supervised
    if weight is None:
        assert float(gs_count) == supervised
    assert float(stats["gs_skipped"]) == skipped

    before = [v.numpy().copy() for v in gs.trainable_weights]
    history = gs.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    assert gs.jit_compile is True
    for key in ("loss", "main_loss", "gs_loss", "gs_cosine", "gs_supervised", "gs_skipped"):
        assert np.isfinite(history[key][0]), key
    points = len(stats["gs_supervised"]) if active is None else active
    np.testing.assert_allclose(history["gs_supervised"][0], supervised / max(points, 1), atol=1e-6)
    assert history["gs_skipped"][0] == skipped
    for variable in gs.trainable_weights:
        assert _finite(variable.numpy()), variable.path
    return total, stats, gradients, before


# === Equal labels: no supervised class ===


@pytest.mark.parametrize("num_classes", [1, 3])
def test_equal_labels(num_classes):
    if num_classes == 1:
        gs = compiled("dense", _dense_gs)
        y = np.array([0.0, 1.0, 0.0, 1.0])
    else:
        build = lambda: GradientSupervisionModel(_dense(num_classes=3), gs_layer="hidden")  # noqa: E731
        gs = compiled("softmax", build, loss="sparse_categorical_crossentropy")
        y = np.array([0, 1, 2, 1])
    x_i, x_j = RNG.normal(size=(2, 4, 4)).astype("float32")
    total, stats, _, _ = check(gs, _batch(x_i, x_j, y, y), supervised=0, skipped=0)
    assert float(stats["gs_loss"][0]) == 0.0
    assert float(total) == float(stats["main_loss"])


# === Identical inputs in the GS space, flipped labels ===


def test_identical_inputs_with_flipped_labels_are_skipped():
    gs = compiled("text", _text_gs)
    x_i = np.array(
        [[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 0, 0], [2, 11, 0, 0, 0, 0], [5, 6, 0, 0, 0, 0]]
    )
    x_j = x_i.copy()
    x_j[1, :4] = [9, 8, 7, 6]  # a permutation: identical bag of words, identical mean embedding
    x_j[3, :2] = [12, 13]  # the only pair that differs in the GS space
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    _, stats, _, _ = check(
        gs, _batch(x_i.astype("int32"), x_j.astype("int32"), y_i, 1 - y_i), supervised=2, skipped=6
    )
    np.testing.assert_array_equal(stats["gs_supervised"], [0, 0, 0, 1, 0, 0, 0, 1])


def test_imdb_identical_text_pair_8822():
    """The CAD train pair whose two reviews are identical but labels differ."""
    pairs = load_imdb_pairs("train")
    index = int(np.flatnonzero(pairs.group_id == 8822)[0])
    assert pairs.text[index] == pairs.text_counterfactual[index]
    assert pairs.label[index] != pairs.label_counterfactual[index]
    rows = [index, 0, 1]  # with two ordinary pairs
    vectorizer = keras.layers.TextVectorization(max_tokens=200, output_sequence_length=64)
    vectorizer.adapt(np.concatenate([pairs.text[rows], pairs.text_counterfactual[rows]]))
    tokens = lambda text: vectorizer(text).numpy().astype("int32")  # noqa: E731
    gs = compiled("imdb", lambda: _text_gs(vocabulary=200, length=64))
    batch = _batch(
        tokens(pairs.text[rows]),
        tokens(pairs.text_counterfactual[rows]),
        pairs.label[rows].astype("float32"),
        pairs.label_counterfactual[rows].astype("float32"),
    )
    _, stats, _, _ = check(gs, batch, supervised=4, skipped=2)
    np.testing.assert_array_equal(stats["gs_supervised"], [0, 1, 1, 0, 1, 1])


# === Near-identical inputs: a relative threshold ===


def _near_identical(scale):
    """Pairs 0, 1 offset by 1e-6 relative (below the 1e-5 threshold), 2, 3 by 1e-2."""
    rng = np.random.default_rng(1)
    x_i = scale * rng.normal(size=(4, 4))
    direction = rng.normal(size=(4, 4))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    relative = np.array([1e-6, 1e-6, 1e-2, 1e-2])[:, None]
    x_j = x_i + relative * np.linalg.norm(x_i, axis=1, keepdims=True) * direction
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    return _batch(x_i.astype("float32"), x_j.astype("float32"), y_i, 1 - y_i)


def test_near_identical_inputs_use_a_relative_threshold():
    cosines = {}
    for scale in (1e3, 1e-3):
        # Linear model on the inputs: the cosine does not depend on the scale.
        gs = compiled("linear", _linear_gs)
        _, stats, _, _ = check(gs, _near_identical(scale), supervised=4, skipped=4)
        np.testing.assert_array_equal(stats["gs_supervised"], [0, 0, 1, 1, 0, 0, 1, 1])
        cosines[scale] = float(stats["gs_cosine"][0])
    np.testing.assert_allclose(cosines[1e3], cosines[1e-3], atol=1e-3)


# === Zero input gradient with differing labels ===


def test_zero_initialised_head_is_skipped():
    zero_head = _dense(head_initializer="zeros").get_weights()
    assert not np.any(zero_head[2])  # the output kernel
    gs = compiled("dense", _dense_gs, weights=zero_head)
    x_i, x_j = RNG.normal(size=(2, 4, 4)).astype("float32")
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    total, stats, _, _ = check(gs, _batch(x_i, x_j, y_i, 1 - y_i), supervised=0, skipped=8)
    assert float(total) == float(stats["main_loss"])
    assert np.any(gs.head.get_layer("output").kernel.numpy() != 0)  # the main loss trains it


def test_dead_relus_are_skipped():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(
        3,
        activation="relu",
        kernel_initializer=keras.initializers.Constant(0.1),
        bias_initializer=keras.initializers.Constant(-10.0),
        name="hidden",
    )(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    gs = compiled(
        "dead", lambda: GradientSupervisionModel(keras.Model(inputs, outputs), gs_layer=None)
    )
    x_i, x_j = RNG.uniform(size=(2, 4, 4)).astype("float32")
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    check(gs, _batch(x_i, x_j, y_i, 1 - y_i), supervised=0, skipped=8)


# === All-padding text ===


def test_all_padding_text():
    gs = compiled("text", _text_gs)
    pad = [0] * 6
    x_i = np.array([pad, pad, [3, 4, 0, 0, 0, 0], [5, 6, 7, 0, 0, 0]], "int32")
    x_j = np.array([pad, [8, 9, 0, 0, 0, 0], [3, 10, 0, 0, 0, 0], pad], "int32")
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    # Pair 0 is padding on both sides (identical in the GS space); the others
    # have one all-padding member at most and are supervised.
    _, stats, gradients, _ = check(gs, _batch(x_i, x_j, y_i, 1 - y_i), supervised=6, skipped=2)
    np.testing.assert_array_equal(stats["gs_supervised"], [0, 1, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(gs.encoder(x_i[:1]).numpy(), np.zeros((1, 4)))
    embedding = tf.convert_to_tensor(gradients[0]).numpy()
    assert np.any(embedding != 0)


# === No supervised point, zero sample weights ===


def test_no_supervised_point_gives_zero_gs_loss_not_nan():
    gs = compiled("dense", _dense_gs)
    x_i = RNG.normal(size=(4, 4)).astype("float32")
    x_j = x_i.copy()
    x_j[:2] += 1.0  # pairs 0, 1: different inputs, equal labels
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    y_j = np.array([1.0, 0.0, 0.0, 1.0])  # pairs 2, 3: identical inputs, flipped labels
    batch = _batch(x_i, x_j, y_i, y_j)
    with tf.GradientTape(persistent=True) as tape:
        total, stats = gs.compute_pair_losses(*batch, training=True)
        main = stats["main_loss"]
    assert tuple(float(v) for v in stats["gs_loss"]) == (0.0, 0.0)
    assert float(total) == float(main)
    for with_gs, main_only in zip(
        tape.gradient(total, gs.trainable_weights), tape.gradient(main, gs.trainable_weights)
    ):
        np.testing.assert_array_equal(with_gs, main_only)
    check(gs, batch, supervised=0, skipped=4)


def test_all_zero_sample_weights():
    gs = compiled("dense", _dense_gs)
    x_i, x_j = RNG.normal(size=(2, 4, 4)).astype("float32")
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    x_j[1] = x_i[1]  # identical and flipped, but weightless: not skipped either
    batch = _batch(x_i, x_j, y_i, 1 - y_i, np.zeros(4, "float32"))
    total, _, gradients, before = check(gs, batch, supervised=0, skipped=0, active=0)
    assert float(total) == 0.0
    for gradient in gradients:
        np.testing.assert_array_equal(gradient, 0.0)
    for variable, value in zip(gs.trainable_weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)  # nothing to learn


def test_some_zero_sample_weights():
    gs = compiled("dense", _dense_gs)
    x_i, x_j = RNG.normal(size=(2, 4, 4)).astype("float32")
    y_i = np.array([1.0, 0.0, 1.0, 0.0])
    x_j[1] = x_i[1]
    weight = np.array([1.0, 0.0, 2.0, 0.0], "float32")
    _, stats, _, _ = check(
        gs, _batch(x_i, x_j, y_i, 1 - y_i, weight), supervised=4, skipped=0, active=4
    )
    np.testing.assert_array_equal(stats["gs_supervised"], [1, 0, 1, 0, 1, 0, 1, 0])
    # The weighted mean over supervised points equals the same mean over the
    # weighted pairs alone.
    weighted = gs.compute_pair_losses(*_batch(x_i, x_j, y_i, 1 - y_i, weight))[1]["gs_loss"]
    keep = [0, 2]
    alone = gs.compute_pair_losses(
        *_batch(x_i[keep], x_j[keep], y_i[keep], 1 - y_i[keep], weight[keep])
    )[1]["gs_loss"]
    np.testing.assert_allclose(float(weighted[0]), float(alone[0]), rtol=1e-6)
    assert float(weighted[1]) == float(alone[1]) == 2 * 3.0


# === Mixed precision ===


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _mixed_precision_batch():
    rng = np.random.default_rng(3)
    x_i, x_j = rng.normal(size=(2, 8, 4)).astype("float32")
    y_i = (np.arange(8) % 2).astype("float32")
    return _batch(x_i, x_j, y_i, 1 - y_i)


def test_mixed_float16_matches_float32(mixed_float16):
    batch = _mixed_precision_batch()
    keras.mixed_precision.set_global_policy("float32")
    reference = compiled("dense", _dense_gs)
    total32, stats32 = reference.compute_pair_losses(*batch)

    keras.mixed_precision.set_global_policy("mixed_float16")
    gs = _dense_gs()
    gs.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", jit_compile=True)
    assert gs.head.get_layer("output").compute_dtype == "float16"
    gs.set_weights(reference.get_weights())
    total, stats, _, _ = check(gs, batch, supervised=16, skipped=0)
    gs.set_weights(reference.get_weights())
    total, stats = gs.compute_pair_losses(*batch)
    np.testing.assert_allclose(float(stats["gs_loss"][0]), float(stats32["gs_loss"][0]), atol=1e-2)
    np.testing.assert_allclose(
        float(stats["gs_cosine"][0]), float(stats32["gs_cosine"][0]), atol=1e-2
    )
    np.testing.assert_allclose(float(total), float(total32), atol=1e-2)
    assert isinstance(gs.optimizer, keras.optimizers.LossScaleOptimizer)
