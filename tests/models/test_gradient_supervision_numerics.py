"""Numerics of `GradientSupervisionModel`: hand-computed values, float64 finite
differences of the loss and its (second-order) parameter gradients, and a
behavioural check of the sign convention that does not reuse the library's
contrast logit.
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import cfkeras
from cfkeras.layers import MaskedMean
from cfkeras.models import GradientSupervisionModel
from cfkeras.pairs import make_pair

FD_STEP = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-9


def _cos(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _swap(a):
    """Rows `[a_i; a_j]` -> `[a_j; a_i]`: each point's partner."""
    n = len(a) // 2
    return np.concatenate([a[n:], a[:n]])


@pytest.fixture
def float64():
    # Layers read the global dtype policy, which is cached at its first use:
    # set (and restore) it along with floatx.
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous[0])
    keras.config.set_dtype_policy(previous[1])


# === Hand-computed: linear models ===


def _linear_binary(w, b, activation=None):
    model = keras.Sequential([keras.Input((len(w),)), keras.layers.Dense(1, activation=activation)])
    model.layers[-1].set_weights([w[:, None], np.array([b])])
    return model


@pytest.mark.parametrize("both_directions", [True, False])
def test_linear_binary_hand_computed(both_directions):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, d = 6, 4
    w, b = rng.normal(size=d), 0.3
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i, y_j = np.ones((n, 1), "float32"), np.zeros((n, 1), "float32")
    gs = GradientSupervisionModel(
        _linear_binary(w, b), gs_weight=0.7, both_directions=both_directions
    )
    gs.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    total, stats = gs.compute_pair_losses(make_pair(x_i, x_j), make_pair(y_i, y_j))

    # i -> j: y 1 -> 0, g = -w toward x_j - x_i; j -> i: g = +w toward x_i - x_j.
    forward = 1 - _cos(-w, x_j - x_i)
    backward = 1 - _cos(w, x_i - x_j)
    np.testing.assert_allclose(forward, backward, rtol=1e-12)
    expected = np.mean(np.concatenate([forward, backward]) if both_directions else forward)
    assert 0.1 < expected < 1.9
    mean, count = stats["gs_loss"]
    np.testing.assert_allclose(float(mean), expected, rtol=1e-5)
    assert float(count) == (2 * n if both_directions else n)
    np.testing.assert_allclose(float(stats["gs_cosine"][0]), 1 - expected, rtol=1e-5, atol=1e-6)
    logits = np.concatenate([x_i, x_j]) @ w + b
    labels = np.concatenate([y_i, y_j])[:, 0]
    main = np.mean(_softplus(logits) - labels * logits)
    np.testing.assert_allclose(float(stats["main_loss"]), main, rtol=1e-5)
    np.testing.assert_allclose(float(total) - float(stats["main_loss"]), 0.7 * expected, rtol=1e-5)


def test_linear_binary_mixed_labels_and_pair_weights():
    rng = np.random.default_rng(1)
    n, d = 6, 4
    w, b = rng.normal(size=d), -0.2
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = np.array([1, 0, 1, 0, 1, 0], "float32")[:, None]
    y_j = np.array([0, 1, 0, 1, 1, 1], "float32")[:, None]  # pair 4: equal labels
    pair_weight = np.array([1.0, 2.0, 0.0, 0.5, 1.0, 1.0], "float32")
    gs = GradientSupervisionModel(_linear_binary(w, b), gs_weight=2.0, both_directions=False)
    gs.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    total, stats = gs.compute_pair_losses(
        make_pair(x_i, x_j), make_pair(y_i, y_j), sample_weight=pair_weight
    )
    sign = (y_j - y_i)[:, 0]  # +w when 0 -> 1, -w when 1 -> 0
    labelled = sign != 0
    loss = np.zeros(n)
    loss[labelled] = 1 - _cos(sign[labelled, None] * w, (x_j - x_i)[labelled])
    point_weight = pair_weight * labelled
    expected = np.sum(point_weight * loss) / point_weight.sum()
    np.testing.assert_allclose(float(stats["gs_loss"][0]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(stats["gs_loss"][1]), point_weight.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(total) - float(stats["main_loss"]), 2.0 * expected, rtol=1e-5)


def test_sigmoid_output_is_stripped_to_logits():
    rng = np.random.default_rng(2)
    n, d = 8, 5
    w, b = rng.normal(size=d), 0.1
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = rng.integers(0, 2, size=(n, 1)).astype("float32")
    x, y = make_pair(x_i, x_j), make_pair(y_i, 1 - y_i)
    results = []
    for activation, loss in (
        (None, keras.losses.BinaryCrossentropy(from_logits=True)),
        ("sigmoid", keras.losses.BinaryCrossentropy()),
    ):
        gs = GradientSupervisionModel(_linear_binary(w, b, activation))
        gs.compile(optimizer="sgd", loss=loss)
        results.append(gs.compute_pair_losses(x, y)[1])
    logits_stats, sigmoid_stats = results
    np.testing.assert_allclose(
        float(sigmoid_stats["gs_loss"][0]), float(logits_stats["gs_loss"][0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(sigmoid_stats["main_loss"]), float(logits_stats["main_loss"]), rtol=1e-4
    )
    sign = (1 - 2 * y_i)[:, 0]
    expected = np.mean(1 - _cos(sign[:, None] * w, x_j - x_i))
    np.testing.assert_allclose(float(sigmoid_stats["gs_loss"][0]), expected, rtol=1e-5)
    # The wrapped model still outputs probabilities.
    probabilities = np.asarray(sigmoid_stats["y_pred"])[:, 0]
    logits = np.concatenate([x_i, x_j]) @ w + b
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5)


@pytest.mark.parametrize("class_selection", ["changed", "ground_truth"])
@pytest.mark.parametrize("form", ["sparse_logits", "one_hot_softmax"])
def test_linear_softmax_hand_computed(class_selection, form):
    rng = np.random.default_rng(3)
    n, d, k = 6, 4, 3
    kernel, bias = rng.normal(size=(d, k)), rng.normal(size=k)
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = np.array([0, 1, 2, 0, 1, 2])
    y_j = np.array([1, 2, 0, 2, 0, 1])
    if form == "sparse_logits":
        layer = keras.layers.Dense(k)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        labels = make_pair(y_i, y_j)
    else:
        layer = keras.layers.Dense(k, activation="softmax")
        loss = keras.losses.CategoricalCrossentropy()
        labels = make_pair(np.eye(k)[y_i].astype("float32"), np.eye(k)[y_j].astype("float32"))
    model = keras.Sequential([keras.Input((d,)), layer])
    layer.set_weights([kernel, bias])
    gs = GradientSupervisionModel(model, class_selection=class_selection)
    gs.compile(optimizer="sgd", loss=loss)
    _, stats = gs.compute_pair_losses(make_pair(x_i, x_j), labels)

    if class_selection == "changed":
        # z = f_{y_j} - f_{y_i}: g = W[:, y_j] - W[:, y_i], the same cosine both ways.
        forward = 1 - _cos((kernel[:, y_j] - kernel[:, y_i]).T, x_j - x_i)
        backward = 1 - _cos((kernel[:, y_i] - kernel[:, y_j]).T, x_i - x_j)
        np.testing.assert_allclose(forward, backward, rtol=1e-12)
    else:
        # z = -f_{y_i}: g = -W[:, y_i] at x_i and -W[:, y_j] at x_j.
        forward = 1 - _cos(-kernel[:, y_i].T, x_j - x_i)
        backward = 1 - _cos(-kernel[:, y_j].T, x_i - x_j)
    expected = np.mean(np.concatenate([forward, backward]))
    np.testing.assert_allclose(float(stats["gs_loss"][0]), expected, rtol=1e-5)
    assert float(stats["gs_loss"][1]) == 2 * n


# === Finite differences (float64) ===


def _tanh_mlp(d_in, width, mid=False):
    inputs = keras.Input((d_in,))
    h = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    if mid:
        h = keras.layers.Dense(5, activation="tanh", name="mid")(h)
    outputs = keras.layers.Dense(width, name="logits")(h)
    return keras.Model(inputs, outputs)


def _text_model(vocabulary_size=12, dim=4):
    # cfkeras.models.bag_of_embeddings_classifier, built under float64.
    token_ids = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary_size, dim, mask_zero=True, name="embedding")(
        token_ids
    )
    mean = MaskedMean(name="mean_embedding")(embedded)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(mean)
    return keras.Model(token_ids, outputs)


def _tokens(rng, n, length=6, vocabulary_size=12):
    lengths = rng.integers(3, length + 1, size=n)
    tokens = rng.integers(1, vocabulary_size, size=(n, length))
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    counterfactual = tokens.copy()
    for row, size in enumerate(lengths):  # substitute one or two words
        positions = rng.choice(size, size=rng.integers(1, 3), replace=False)
        counterfactual[row, positions] = (tokens[row, positions] + 1 + rng.integers(0, 3)) % (
            vocabulary_size - 1
        ) + 1
    return tokens.astype("int32"), counterfactual.astype("int32")


def _build_case(name, stop_target_gradient):
    """A tiny float64 problem: `(gs, x, y, contrast weights, logits_fn, kind)`.

    `contrast weights` are `(2n, width)` NumPy rows computed here (not by the
    library); `logits_fn` maps the GS space to the pre-activation logits.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, d = 5, 4
    x_i, x_j = rng.normal(size=(2, n, d))
    kwargs = dict(gs_weight=0.8, stop_target_gradient=stop_target_gradient)
    if name.startswith("binary"):
        model = _tanh_mlp(d, 1)
        y_i = rng.integers(0, 2, size=(n, 1)).astype("float64")
        y_j = 1 - y_i
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        kwargs["gs_layer"] = "hidden" if name == "binary_hidden" else None
    elif name.startswith("softmax"):
        model = _tanh_mlp(d, 3)
        y_i = rng.integers(0, 3, size=n)
        y_j = (y_i + rng.integers(1, 3, size=n)) % 3
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        kwargs["class_selection"] = name.split("_", 1)[1]
    elif name.startswith("multilabel"):
        model = _tanh_mlp(d, 4, mid=True)
        y_i = rng.integers(0, 2, size=(n, 4)).astype("float64")
        y_j = y_i.copy()
        for row in range(n):  # one to three labels change
            flip = rng.choice(4, size=1 + row % 3, replace=False)
            y_j[row, flip] = 1 - y_j[row, flip]
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        kwargs.update(gs_layer="hidden", task="multilabel", multi_label_mode=name.split("_", 1)[1])
    elif name == "text":
        model = _text_model()
        x_i, x_j = _tokens(rng, n)
        y_i = rng.integers(0, 2, size=(n, 1)).astype("float64")
        y_j = 1 - y_i
        loss = keras.losses.BinaryCrossentropy()
        kwargs["gs_layer"] = "mean_embedding"
    else:
        raise ValueError(name)
    gs = GradientSupervisionModel(model, **kwargs)
    gs.compile(optimizer="sgd", loss=loss)

    y_all = np.concatenate([y_i, y_j])
    if name.startswith("softmax"):
        eye = np.eye(3)
        weights = eye[_swap(y_all)] - eye[y_all]
        if kwargs["class_selection"] == "ground_truth":
            weights = -eye[y_all]
    else:
        weights = _swap(y_all) - y_all
    if name == "text":
        output = model.get_layer("output")
        logits_fn = lambda h: ops.matmul(h, output.kernel) + output.bias  # noqa: E731
    else:
        logits_fn = gs.head
    return gs, make_pair(x_i, x_j), make_pair(y_i, y_j), weights, logits_fn


def _reference_gs(gs, x, weights, logits_fn, mode="sum", target=None):
    """Mean GS loss over supervised points, written from the formula.

    `target`: a fixed `x_j - x_i` (the stop_target_gradient objective), else
    the one of the current parameters.
    """
    x_all = tf.concat([x["original"], x["counterfactual"]], axis=0)
    h = x_all if gs.encoder is None else gs.encoder(x_all)
    h = tf.cast(h, "float64")
    n = h.shape[0] // 2
    t = tf.concat([h[n:], h[:n]], axis=0) - h if target is None else target
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        logits = logits_fn(h)
        columns = [tf.reduce_sum(logits[:, c]) for c in range(logits.shape[1])]
    # Rows are independent: the gradient of a column's sum is per row.
    jacobian = tf.stack([tape.gradient(column, h) for column in columns], axis=1)
    weights = tf.constant(weights, "float64")

    def cos(g):
        return tf.reduce_sum(g * t, -1) / (tf.norm(g, axis=-1) * tf.norm(t, axis=-1))

    if mode == "sum":
        cosine = cos(tf.einsum("rc,rcd->rd", weights, jacobian))
    else:  # one cosine per changed label, averaged
        per_label = tf.stack(
            [cos(tf.sign(weights[:, c : c + 1]) * jacobian[:, c]) for c in range(weights.shape[1])],
            axis=1,
        )
        per_label = tf.where(weights != 0, per_label, tf.zeros_like(per_label))
        cosine = tf.reduce_sum(tf.abs(weights) * per_label, -1) / tf.reduce_sum(tf.abs(weights), -1)
    supervised = tf.reduce_sum(tf.abs(weights), -1) > 0
    return tf.reduce_mean(tf.boolean_mask(1.0 - cosine, supervised)), t


def _fd_entries(gs, x, rng):
    """A handful of (variable index, flat entry) to perturb."""
    entries = []
    for index, variable in enumerate(gs.trainable_weights):
        size = int(np.prod(variable.shape))
        if "embedding" in variable.path:
            tokens = np.unique(np.concatenate([x["original"], x["counterfactual"]]))
            rows = rng.choice(tokens[tokens > 0], size=2, replace=False)
            flat = [row * variable.shape[1] + rng.integers(variable.shape[1]) for row in rows]
        else:
            flat = rng.choice(size, size=min(3, size), replace=False)
        entries += [(index, int(f)) for f in flat]
    return entries


def _central_difference(variable, flat, objective):
    original = variable.numpy()
    values = []
    for sign in (1.0, -1.0):
        perturbed = original.copy().reshape(-1)
        perturbed[flat] += sign * FD_STEP
        variable.assign(perturbed.reshape(original.shape))
        values.append(float(objective()))
    variable.assign(original)
    return (values[0] - values[1]) / (2 * FD_STEP)


def _dense(gradient):
    return tf.convert_to_tensor(gradient).numpy()


FD_CASES = [
    "binary_input",
    "binary_hidden",
    "softmax_changed",
    "softmax_ground_truth",
    "multilabel_sum",
    "multilabel_per_label",
    "text",
]


def finite_difference_errors(name, stop_target_gradient):
    """Checks value and gradients of one case; returns the relative FD errors."""
    gs, x, y, weights, logits_fn = _build_case(name, stop_target_gradient)
    mode = gs.multi_label_mode if name.startswith("multilabel") else "sum"
    with tf.GradientTape() as tape:
        total, stats = gs.compute_pair_losses(x, y)
    gradients = [_dense(g) for g in tape.gradient(total, gs.trainable_weights)]
    assert total.dtype == tf.float64 and stats["gs_loss"][0].dtype == tf.float64

    # The value, against the formula written independently.
    reference, target = _reference_gs(gs, x, weights, logits_fn, mode)
    np.testing.assert_allclose(float(stats["gs_loss"][0]), float(reference), rtol=1e-12)
    assert float(stats["gs_loss"][1]) == np.sum(np.abs(weights).sum(-1) > 0)
    np.testing.assert_allclose(
        float(total), float(stats["main_loss"]) + 0.8 * float(reference), rtol=1e-12
    )

    if stop_target_gradient:
        # d/dθ of main + λ GS with x_j - x_i held at its current value.
        frozen = tf.constant(target.numpy())

        @tf.function
        def objective():
            _, current = gs.compute_pair_losses(x, y)
            gs_value, _ = _reference_gs(gs, x, weights, logits_fn, mode, frozen)
            return current["main_loss"] + 0.8 * gs_value
    else:

        @tf.function
        def objective():
            return gs.compute_pair_losses(x, y)[0]

    rng = np.random.default_rng(1)
    analytic, numeric = [], []
    for index, flat in _fd_entries(gs, x, rng):
        variable = gs.trainable_weights[index]
        analytic.append(gradients[index].reshape(-1)[flat])
        numeric.append(_central_difference(variable, flat, objective))
    analytic, numeric = np.array(analytic), np.array(numeric)
    assert np.max(np.abs(analytic)) > 1e-3  # not a vacuous comparison
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL)
    return np.abs(analytic - numeric) / np.maximum(np.abs(numeric), 1e-8)


@pytest.mark.parametrize("stop_target_gradient", [False, True])
@pytest.mark.parametrize("name", FD_CASES)
def test_finite_differences(float64, name, stop_target_gradient):
    finite_difference_errors(name, stop_target_gradient)


def _tanh_net_gs_numpy(model, x_all, weights, space):
    """GS loss of a one-hidden-layer tanh net, input gradients by hand."""
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("logits").get_weights()
    hidden = np.tanh(x_all @ w1 + b1)
    if space == "input":
        # d f_c / d x = W1 diag(1 - tanh^2) W2[:, c]
        jacobian = np.einsum("dk,rk,kc->rcd", w1, 1 - hidden**2, w2)
        points = x_all
    else:
        jacobian = np.broadcast_to(w2.T, (len(x_all),) + w2.T.shape)
        points = hidden
    g = np.einsum("rc,rcd->rd", weights, jacobian)
    return np.mean(1 - _cos(g, _swap(points) - points)), hidden @ w2 + b2


@pytest.mark.parametrize("name", ["binary_input", "binary_hidden", "softmax_changed"])
def test_tanh_net_value_against_numpy(float64, name):
    gs, x, y, weights, _ = _build_case(name, False)
    x_all = np.concatenate([x["original"], x["counterfactual"]])
    space = "hidden" if name == "binary_hidden" else "input"
    expected, logits = _tanh_net_gs_numpy(gs.model, x_all, weights, space)
    total, stats = gs.compute_pair_losses(x, y)
    np.testing.assert_allclose(float(stats["gs_loss"][0]), expected, rtol=1e-12)
    y_all = np.concatenate([y["original"], y["counterfactual"]])
    if name.startswith("binary"):
        main = np.mean(_softplus(logits[:, 0]) - y_all[:, 0] * logits[:, 0])
    else:
        shift = logits.max(-1)
        log_z = shift + np.log(np.sum(np.exp(logits - shift[:, None]), -1))
        main = np.mean(log_z - logits[np.arange(len(y_all)), y_all])
    np.testing.assert_allclose(float(total), main + 0.8 * expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["text", "binary_hidden"])
def test_stop_target_gradient_changes_encoder_gradient_only(float64, name):
    results = {}
    for stop in (False, True):
        gs, x, y, _, _ = _build_case(name, stop)
        with tf.GradientTape(persistent=True) as tape:
            total, stats = gs.compute_pair_losses(x, y)
            main = stats["main_loss"]
        paths = [v.path for v in gs.trainable_weights]
        results[stop] = (
            float(total),
            float(stats["gs_loss"][0]),
            dict(zip(paths, (_dense(g) for g in tape.gradient(total, gs.trainable_weights)))),
            dict(zip(paths, (_dense(g) for g in tape.gradient(main, gs.trainable_weights)))),
        )
    (total_f, gs_f, grad_f, _), (total_t, gs_t, grad_t, main_t) = results[False], results[True]
    assert total_f == pytest.approx(total_t, rel=1e-14)
    assert gs_f == pytest.approx(gs_t, rel=1e-14)
    encoder = [p for p in grad_f if ("embedding" in p or "hidden" in p)]
    head = [p for p in grad_f if p not in encoder]
    assert encoder and head
    for path in encoder:
        # The head is linear in the GS space, so g does not depend on the
        # encoder: with the target stopped, only the main loss reaches it.
        assert np.max(np.abs(grad_f[path] - grad_t[path])) > 1e-3 * np.max(np.abs(grad_f[path]))
        np.testing.assert_allclose(grad_t[path], main_t[path], rtol=1e-12, atol=1e-15)
    for path in head:
        np.testing.assert_allclose(grad_f[path], grad_t[path], rtol=1e-12, atol=1e-15)


# === Behaviour: the sign convention, read from the trained model's outputs ===


def zero_loss(y_true, y_pred):
    return ops.sum(y_pred, axis=-1) * 0.0


def _train_gs_only(model, x_i, x_j, y_i, y_j, steps=300, **kwargs):
    gs = GradientSupervisionModel(model, gs_weight=1.0, **kwargs)
    gs.compile(optimizer=keras.optimizers.Adam(0.02), loss=zero_loss, jit_compile=True)
    dataset = cfkeras.Pairs(x_i, x_j, y_i, y_j).to_dataset(batch_size=16, seed=0)
    history = gs.fit(dataset.repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    assert history.history["main_loss"][-1] == 0.0
    return gs


def _mlp(d, width, activation):
    return keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(width, activation=activation),
        ]
    )


def _step(model, x_i, x_j, eps=1e-2):
    """The wrapped model's outputs at x_i and a small step toward x_j."""
    before = model.predict(x_i, verbose=0).astype("float64")
    after = model.predict(x_i + eps * (x_j - x_i), verbose=0).astype("float64")
    return before, after


def _orthonormal(rng, d, k):
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return q.T


def test_behaviour_binary():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d, n = 6, 64
    (u,) = _orthonormal(rng, d, 1)

    def pairs(m):
        x_i = rng.normal(size=(m, d)).astype("float32")
        y_i = rng.integers(0, 2, size=(m, 1)).astype("float32")
        y_j = 1 - y_i
        x_j = x_i + 1.5 * (y_j - y_i) * u + 0.3 * rng.normal(size=(m, d))
        return x_i, x_j.astype("float32"), y_i, y_j

    model = _mlp(d, 1, "sigmoid")
    _train_gs_only(model, *pairs(n))
    x_i, x_j, y_i, y_j = pairs(n)  # fresh pairs
    before, after = _step(model, x_i, x_j)
    log_odds = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    # Log-odds of y_j's class over y_i's: +logit if y_j = 1, -logit if y_j = 0.
    sign = (2 * y_j - 1)[:, 0]
    raised = sign * (log_odds(after[:, 0]) - log_odds(before[:, 0])) > 0
    assert raised.mean() > 0.9, raised.mean()


@pytest.mark.parametrize("class_selection", ["changed", "ground_truth"])
def test_behaviour_softmax(class_selection):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d, n, k = 6, 64, 3
    centres = 1.5 * _orthonormal(rng, d, k)

    def pairs(m):
        y_i = rng.integers(0, k, size=m)
        y_j = (y_i + rng.integers(1, k, size=m)) % k
        x_i = centres[y_i] + 0.5 * rng.normal(size=(m, d))
        x_j = x_i - centres[y_i] + centres[y_j] + 0.2 * rng.normal(size=(m, d))
        return x_i.astype("float32"), x_j.astype("float32"), y_i, y_j

    model = _mlp(d, k, "softmax")
    _train_gs_only(model, *pairs(n), class_selection=class_selection)
    x_i, x_j, y_i, y_j = pairs(n)
    before, after = _step(model, x_i, x_j)
    rows = np.arange(n)
    contrast = lambda p: np.log(p[rows, y_j]) - np.log(p[rows, y_i])  # noqa: E731
    raised = contrast(after) - contrast(before) > 0
    assert raised.mean() > 0.9, raised.mean()


@pytest.mark.parametrize("multi_label_mode", ["sum", "per_label"])
def test_behaviour_multi_label(multi_label_mode):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d, n, k = 6, 64, 4
    directions = 1.5 * _orthonormal(rng, d, k)

    def pairs(m):
        y_i = rng.integers(0, 2, size=(m, k)).astype("float32")
        y_j = y_i.copy()
        for row in range(m):
            flip = rng.choice(k, size=1 + row % 2, replace=False)
            y_j[row, flip] = 1 - y_j[row, flip]
        x_i = rng.normal(size=(m, d))
        x_j = x_i + (y_j - y_i) @ directions + 0.2 * rng.normal(size=(m, d))
        return x_i.astype("float32"), x_j.astype("float32"), y_i, y_j

    model = _mlp(d, k, "sigmoid")
    _train_gs_only(model, *pairs(n), multi_label_mode=multi_label_mode)
    x_i, x_j, y_i, y_j = pairs(n)
    before, after = _step(model, x_i, x_j)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    moved = np.sign(y_j - y_i) * (logit(after) - logit(before))
    changed = y_j != y_i
    toward = moved[changed] > 0
    assert toward.mean() > 0.9, toward.mean()


def test_per_label_xla_step_is_not_recompiled_for_every_batch():
    # Differentiating `tape.batch_jacobian` (a pfor loop) again under XLA made
    # the inputs compile-time constants: every new batch recompiled (~1 s).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d, n, k = 6, 64, 4
    x_i = rng.normal(size=(n, d)).astype("float32")
    x_j = x_i + rng.normal(size=(n, d)).astype("float32")
    y_i = rng.integers(0, 2, size=(n, k)).astype("float32")
    gs = GradientSupervisionModel(_mlp(d, k, "sigmoid"), multi_label_mode="per_label")
    gs.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
    dataset = cfkeras.Pairs(x_i, x_j, y_i, 1 - y_i).to_dataset(batch_size=8, seed=0).repeat()
    gs.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)  # compiles
    start = time.perf_counter()
    gs.fit(dataset, steps_per_epoch=8, epochs=1, verbose=0)  # eight new batches
    assert time.perf_counter() - start < 2.0


def test_zero_gs_weight_reports_gs_but_trains_on_the_main_loss_only():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    gs = cfkeras.GradientSupervisionModel(model, gs_layer="hidden", gs_weight=0.0)
    gs.compile(optimizer="sgd", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    x_cf = rng.normal(size=(8, 4)).astype("float32")
    y = (np.arange(8) % 2).astype("float32")
    px = cfkeras.pairs.make_pair(x, x_cf)
    py = cfkeras.pairs.make_pair(y, 1 - y)
    with tf.GradientTape(persistent=True) as tape:
        total, stats = gs.compute_pair_losses(px, py, training=True)
    gradients = tape.gradient(total, gs.trainable_weights)
    # The GS statistics are not differentiated (no second-order pass) ...
    assert all(g is None for g in tape.gradient(stats["gs_loss"][0], gs.trainable_weights))
    # ... as they are with a positive weight.
    gs.gs_weight = 1.0
    with tf.GradientTape() as weighted:
        _, weighted_stats = gs.compute_pair_losses(px, py, training=True)
    assert any(
        g is not None for g in weighted.gradient(weighted_stats["gs_loss"][0], gs.trainable_weights)
    )
    gs.gs_weight = 0.0
    with tf.GradientTape() as tape:
        main = keras.losses.binary_crossentropy(
            np.concatenate([y, 1 - y])[:, None], model(np.concatenate([x, x_cf]))
        )
        main = tf.reduce_mean(main)
    expected = tape.gradient(main, gs.trainable_weights)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert float(stats["gs_loss"][1]) == 16.0  # still computed and reported
    assert 0.0 < float(stats["gs_loss"][0]) < 2.0
