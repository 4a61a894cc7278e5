"""Tests for `cfkeras.models.ensemble`: stacked ensembles averaging logits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.models.ensemble import GS_SPACE, StackedEnsemble, stacked_ensemble


def dense_member(seed=None, inputs=2, hidden=None, classes=1, activation="sigmoid"):
    """Input -> [Dense(hidden) "hidden"] -> Dense(classes, activation) "output"."""
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.Input((inputs,), name="features")
    h = x
    if hidden:
        h = keras.layers.Dense(hidden, kernel_initializer=init, name="hidden")(x)
    out = keras.layers.Dense(
        classes, activation=activation, kernel_initializer=init, name="output"
    )(h)
    return keras.Model(x, out, name="member")


def set_dense(layer, kernel, bias):
    layer.set_weights([np.asarray(kernel, "float32"), np.asarray(bias, "float32")])


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# === Averaging ===


def test_sigmoid_ensemble_averages_logits_not_probabilities():
    ensemble = StackedEnsemble([dense_member(), dense_member(), dense_member()])
    kernels = [[[1.0], [0.0]], [[0.0], [2.0]], [[-3.0], [1.0]]]
    biases = [[0.5], [-1.0], [0.0]]
    for member, kernel, bias in zip(ensemble.members, kernels, biases):
        set_dense(member.get_layer("output"), kernel, bias)
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]], "float32")
    logits = np.stack([x @ np.array(k) + np.array(b) for k, b in zip(kernels, biases)], axis=1)
    # logits[:, k] is member k's logit: [[1.5, 3, -1], [-0.5, 0, 3.5], [0.5, -1, 0]].
    expected = sigmoid(logits.mean(axis=1))
    np.testing.assert_allclose(ensemble(x), expected, rtol=1e-6)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(ensemble.member_logits(x), logits, rtol=1e-6)
    np.testing.assert_allclose(ensemble.member_predictions(x), sigmoid(logits), rtol=1e-6)
    assert not np.allclose(expected, sigmoid(logits).mean(axis=1), atol=1e-3)
    assert ensemble.output_activation == "sigmoid" and ensemble.num_members == 3


def test_softmax_ensemble_averages_logits():
    members = [dense_member(classes=3, activation="softmax") for _ in range(2)]
    ensemble = StackedEnsemble(members)
    kernels = [np.arange(6.0).reshape(2, 3) / 4, -np.arange(6.0).reshape(2, 3)[::-1] / 3]
    for member, kernel in zip(ensemble.members, kernels):
        set_dense(member.get_layer("output"), kernel, [0.1, 0.0, -0.1])
    x = np.array([[1.0, -2.0], [0.5, 0.5]], "float32")
    mean = np.mean([x @ k + [0.1, 0.0, -0.1] for k in kernels], axis=0)
    expected = np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ensemble(x), expected, rtol=1e-5)


def test_gs_layer_ensemble_has_a_stacked_gs_space_and_the_same_outputs():
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(3)]
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    space = ensemble.get_layer(GS_SPACE).output
    assert tuple(space.shape) == (None, 3, 4)
    np.testing.assert_allclose(
        ensemble(x), sigmoid(np.mean(ensemble.member_logits(x), axis=1)), rtol=1e-5
    )
    for k, member in enumerate(ensemble.members):
        hidden = member.get_layer("hidden")
        np.testing.assert_allclose(
            keras.Model(member.input, hidden.output)(x),
            keras.Model(ensemble.input, space)(x)[:, k],
            rtol=1e-6,
        )


# === Construction ===


def test_members_differ_after_init_and_seeds_reproduce():
    single = stacked_ensemble(lambda seed: dense_member(seed=seed), 1)
    x = np.ones((2, 2), "float32")
    np.testing.assert_allclose(single(x), single.member_predictions(x)[:, 0], rtol=1e-6)
    unseeded = stacked_ensemble(lambda seed: dense_member(), 4)
    kernels = [m.get_layer("output").get_weights()[0] for m in unseeded.members]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(kernels[a], kernels[b])
    seeded = [stacked_ensemble(lambda seed: dense_member(seed=seed, hidden=3), 3) for _ in "ab"]
    for a, b in zip(seeded[0].members, seeded[1].members):
        for u, v in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(u, v)
    first = [w for w in seeded[0].members[0].get_weights() if w.ndim == 2]
    second = [w for w in seeded[0].members[1].get_weights() if w.ndim == 2]
    assert not np.allclose(first[0], second[0])


def test_members_are_renamed_and_rewired_to_logits():
    original = dense_member()
    ensemble = StackedEnsemble([original, dense_member()], name="pair")
    assert [m.name for m in ensemble.members] == ["member_0", "member_1"]
    assert original.get_layer("output").activation is keras.activations.linear
    assert ensemble.get_layer("ensemble_output").activation.__name__ == "sigmoid"


def test_invalid_members_raise():
    with pytest.raises(ValueError, match="at least one member"):
        StackedEnsemble([])
    with pytest.raises(ValueError, match="same inputs"):
        StackedEnsemble([dense_member(inputs=2), dense_member(inputs=3)])
    member = dense_member()
    with pytest.raises(ValueError, match="share the weight"):
        StackedEnsemble([member, member])
    with pytest.raises(ValueError, match="activations differ"):
        StackedEnsemble([dense_member(), dense_member(activation=None)])
    with pytest.raises(ValueError, match="output logits"):
        StackedEnsemble([dense_member()], activation="sigmoid")
    with pytest.raises(ValueError, match="no such layer"):
        StackedEnsemble([dense_member()], gs_layer="missing")
    x = keras.Input((2,))
    two = keras.Model(x, [keras.layers.Dense(1)(x), keras.layers.Dense(1)(x)])
    with pytest.raises(ValueError, match="one output"):
        StackedEnsemble([two])


# === Training: every member on its own loss ===


def test_fit_trains_each_member_exactly_as_if_alone():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 3)).astype("float32")
    y = (x[:, :1] + 0.3 * x[:, 1:2] > 0).astype("float32")
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(3)]
    initial = [m.get_weights() for m in members]
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    ensemble.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    history = ensemble.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    for k, weights in enumerate(initial):
        alone = dense_member(inputs=3, hidden=4)
        alone.set_weights(weights)
        alone.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        alone.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        for trained, reference in zip(ensemble.members[k].get_weights(), alone.get_weights()):
            np.testing.assert_allclose(trained, reference, rtol=1e-5, atol=1e-6)
        assert not np.allclose(ensemble.members[k].get_weights()[0], weights[0])
    # The logged loss is the sum of the members' losses.
    member_losses = sum(history.history[f"member_{k}_loss"][-1] for k in range(3))
    np.testing.assert_allclose(history.history["loss"][-1], member_losses, rtol=1e-5)


def test_fit_logs_ensemble_and_member_metrics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 2)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    ensemble = stacked_ensemble(lambda seed: dense_member(seed=seed), 2)
    ensemble.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    logs = ensemble.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {
        "loss",
        "accuracy",
        "member_0_loss",
        "member_1_loss",
        "member_0_accuracy",
        "member_1_accuracy",
    }
    predictions = ensemble.member_predictions(x)
    for k in range(2):
        expected = np.mean((np.asarray(predictions[:, k, 0]) > 0.5) == y)
        np.testing.assert_allclose(logs[f"member_{k}_accuracy"], expected, rtol=1e-6)
    ensemble_hits = (ensemble.predict(x, verbose=0)[:, 0] > 0.5) == y
    np.testing.assert_allclose(logs["accuracy"], ensemble_hits.mean(), rtol=1e-6)
    history = ensemble.fit(x, y, epochs=1, validation_data=(x, y), verbose=0)
    assert "val_member_1_accuracy" in history.history


def test_evaluate_members_on_pairs_and_weights():
    ensemble = StackedEnsemble([dense_member(), dense_member()])
    set_dense(ensemble.members[0].get_layer("output"), [[1.0], [0.0]], [0.0])
    set_dense(ensemble.members[1].get_layer("output"), [[-1.0], [0.0]], [0.5])
    x = np.array([[1.0, 0.0], [-2.0, 0.0]], "float32")
    # Member 0 gets both right, member 1 neither; the ensemble logits (0.25, 0.25).
    pairs = cfkeras.Pairs(x[:1], x[1:], np.array([1.0]), np.array([0.0]))
    results = ensemble.evaluate_members(pairs.to_dataset(batch_size=1, shuffle=False))
    assert results == {"member_0_accuracy": 1.0, "member_1_accuracy": 0.0, "ensemble_accuracy": 0.5}
    weighted = [(x, np.array([1.0, 0.0]), np.array([3.0, 1.0]))]
    assert ensemble.evaluate_members(weighted)["ensemble_accuracy"] == 0.75
    per_member = cfkeras.Pairs(
        x[:1],
        x[1:],
        np.array([1.0]),
        np.array([0.0]),
        sample_weight={"original": np.array([3.0]), "counterfactual": np.array([1.0])},
    )
    dataset = per_member.to_dataset(batch_size=1, shuffle=False)
    assert ensemble.evaluate_members(dataset)["ensemble_accuracy"] == 0.75


# === Saving ===


def test_keras_file_and_json_config_round_trip(tmp_path):
    ensemble = stacked_ensemble(
        lambda seed: cfkeras.models.bag_of_embeddings_classifier(30, embedding_dim=4),
        3,
        gs_layer="mean_embedding",
    )
    ensemble.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(3).integers(0, 30, size=(8, 5))
    ensemble.fit(x, np.arange(8) % 2, epochs=1, verbose=0)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, StackedEnsemble)
    assert (loaded.gs_layer, loaded.output_activation, loaded.num_members) == (
        "mean_embedding",
        "sigmoid",
        3,
    )
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ensemble.predict(x, verbose=0))
    np.testing.assert_allclose(loaded.member_logits(x), ensemble.member_logits(x))
    loaded.fit(x, np.arange(8) % 2, epochs=1, verbose=0)  # still trainable, still compiled

    config = json.loads(json.dumps(keras.saving.serialize_keras_object(ensemble)))
    rebuilt = keras.saving.deserialize_keras_object(config)
    assert rebuilt.get_config()["members"][0]["config"]["name"] == "member_0"
    assert rebuilt(x).shape == (8, 1)


# === With gradient supervision ===


def _gs_pairs(seed=4, n=6):
    rng = np.random.default_rng(seed)
    x_i = rng.normal(size=(n, 3)).astype("float32")
    x_j = rng.normal(size=(n, 3)).astype("float32")
    y_i = (np.arange(n) % 2).astype("float32")
    return cfkeras.Pairs(x_i, x_j, y_i, 1 - y_i)


def test_gradient_supervision_on_the_ensemble_is_per_member():
    # Member k: h_k = hidden_k(x), logit f_k = w_k . h_k + b_k; the GS space
    # stacks the h_k. Each member gets its own cosine cos(s w_k, Δh_k).
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(2)]
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, gs_weight=1.0)
    assert gs.members_layer == "ensemble_member_logits"
    gs.compile(optimizer="sgd", loss="binary_crossentropy")
    pairs = _gs_pairs()
    x, y = next(iter(pairs.to_dataset(batch_size=6, shuffle=False)))
    total, stats = gs.compute_pair_losses(x, y)

    hidden = [keras.Model(m.input, m.get_layer("hidden").output) for m in ensemble.members]
    w = [m.get_layer("output").get_weights()[0][:, 0] for m in ensemble.members]
    y_i = pairs.label
    origin = np.concatenate([pairs.original, pairs.counterfactual])
    target = np.concatenate([pairs.counterfactual, pairs.original])
    sign = np.concatenate([(1 - y_i) - y_i, y_i - (1 - y_i)])
    cosines = np.zeros((12, 2))
    for r in range(12):
        for k in range(2):
            d = np.asarray(hidden[k](target[r : r + 1]) - hidden[k](origin[r : r + 1]))[0]
            g = sign[r] * w[k]
            cosines[r, k] = g @ d / np.linalg.norm(g) / np.linalg.norm(d)
    np.testing.assert_allclose(stats["gs_cosine_per_point"], cosines.mean(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["gs_loss"][0], np.mean(1 - cosines), rtol=1e-5)
    # The objective sums the members' own losses; the reported loss is their mean.
    member_main = []
    labels = np.concatenate([y_i, 1 - y_i])
    for m in ensemble.members:
        f = np.asarray(m(origin), np.float64)[:, 0]  # logits: the loss is not clipped
        member_main.append(np.mean(np.logaddexp(0, f) - labels * f))
    np.testing.assert_allclose(stats["main_loss"], np.mean(member_main), rtol=1e-5)
    expected_total = np.sum(member_main) + np.sum(1 - cosines.mean(0))
    np.testing.assert_allclose(total, expected_total, rtol=1e-5)


def test_gradient_supervision_trains_each_member_exactly_as_if_alone():
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(3)]
    initial = [m.get_weights() for m in members]
    pairs = _gs_pairs(seed=7, n=16)
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, gs_weight=2.0)
    gs.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    gs.fit(pairs.to_dataset(batch_size=8, shuffle=False), epochs=2, verbose=0)
    for k, weights in enumerate(initial):
        alone = dense_member(inputs=3, hidden=4)
        alone.set_weights(weights)
        alone_gs = cfkeras.GradientSupervisionModel(alone, gs_layer="hidden", gs_weight=2.0)
        alone_gs.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        alone_gs.fit(pairs.to_dataset(batch_size=8, shuffle=False), epochs=2, verbose=0)
        for trained, reference in zip(ensemble.members[k].get_weights(), alone.get_weights()):
            np.testing.assert_allclose(trained, reference, rtol=1e-5, atol=1e-6)
        assert not np.allclose(ensemble.members[k].get_weights()[0], weights[0])


@pytest.mark.parametrize("activation, classes", [("sigmoid", 1), ("softmax", 3)])
@pytest.mark.parametrize("paired", [True, False])
def test_saturated_member_gets_the_gradient_it_gets_alone(activation, classes, paired):
    # Member 0 is saturated the wrong way (bias -20 on its true class, +20
    # elsewhere), member 1 half-way (-10). Probabilities clipped to
    # [1e-7, 1 - 1e-7] gave member 0 a main-loss gradient of exactly 0.
    members = [
        dense_member(seed=k, inputs=3, hidden=4, classes=classes, activation=activation)
        for k in range(2)
    ]
    pairs = _gs_pairs(seed=3, n=4)
    if classes > 1:
        pairs = cfkeras.Pairs(
            pairs.original, pairs.counterfactual, np.zeros(4, "int32"), np.full(4, 2, "int32")
        )
    loss = "binary_crossentropy" if classes == 1 else "sparse_categorical_crossentropy"
    for member, bias in zip(members, (20.0, 10.0)):
        layer = member.get_layer("output")
        kernel = layer.get_weights()[0]
        # Binary: the logit -bias on every example; softmax: class 1 (never a label) +bias.
        set_dense(layer, kernel, [-bias] if classes == 1 else [0.0, bias, 0.0])
    initial = [m.get_weights() for m in members]
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, gs_weight=1.0)
    gs.compile(optimizer="sgd", loss=loss)
    x, y = next(iter(pairs.to_dataset(batch_size=4, shuffle=False)))
    if not paired:
        x, y = x["original"], y["original"]
    if classes == 1:
        y = keras.tree.map_structure(lambda t: tf.ones_like(t), y)  # positives at logit -20

    def gradients(model, variables):
        with tf.GradientTape() as tape:
            total, _ = model.compute_step_losses(x, y, training=True)
        return [np.asarray(g) for g in tape.gradient(total, variables)]

    for k, weights in enumerate(initial):
        alone = dense_member(inputs=3, hidden=4, classes=classes, activation=activation)
        alone.set_weights(weights)
        alone_gs = cfkeras.GradientSupervisionModel(alone, gs_layer="hidden", gs_weight=1.0)
        alone_gs.compile(optimizer="sgd", loss=loss)
        expected = gradients(alone_gs, alone.trainable_weights)
        member = ensemble.members[k]
        found = gradients(gs, member.trainable_weights)
        for g, e in zip(found, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
        bias_gradient = expected[-1]
        assert np.max(np.abs(bias_gradient)) > 0.1  # saturated, yet a real gradient


def test_unpaired_fit_through_gradient_supervision_trains_each_member_alone():
    # The augmentation baseline runs through the same trainer on unpaired data.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(2)]
    initial = [m.get_weights() for m in members]
    gs = cfkeras.GradientSupervisionModel(
        StackedEnsemble(members, gs_layer="hidden"), gs_layer=GS_SPACE
    )
    gs.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    gs.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for k, weights in enumerate(initial):
        alone = dense_member(inputs=3, hidden=4)
        alone.set_weights(weights)
        alone.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        alone.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        for trained, reference in zip(gs.model.members[k].get_weights(), alone.get_weights()):
            np.testing.assert_allclose(trained, reference, rtol=1e-5, atol=1e-6)


def test_gradient_supervision_fit_trains_every_member_and_round_trips(tmp_path):
    build = lambda seed: cfkeras.models.bag_of_embeddings_classifier(40, embedding_dim=4)
    ensemble = stacked_ensemble(build, 3, gs_layer="mean_embedding")
    before = [m.get_weights() for m in ensemble.members]
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, gs_weight=5.0)
    gs.compile(optimizer=keras.optimizers.Adadelta(1.0), loss="binary_crossentropy")
    rng = np.random.default_rng(5)
    x_i, x_j = rng.integers(1, 40, size=(16, 6)), rng.integers(1, 40, size=(16, 6))
    pairs = cfkeras.Pairs(x_i, x_j, np.zeros(16), np.ones(16))
    history = gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["gs_loss"]))
    for member, weights in zip(ensemble.members, before):
        assert not np.allclose(member.get_weights()[0], weights[0])
    np.testing.assert_allclose(
        gs.predict(x_i, verbose=0), ensemble.predict(x_i, verbose=0), rtol=1e-5
    )
    gs.save(tmp_path / "gs.keras")
    loaded = keras.models.load_model(tmp_path / "gs.keras")
    assert isinstance(loaded.model, StackedEnsemble)
    np.testing.assert_allclose(loaded.predict(x_i, verbose=0), gs.predict(x_i, verbose=0))


def test_fit_applies_dense_embedding_gradients():
    # Sparse (IndexedSlices) embedding gradients make XLA recompile the step
    # on every call with Adadelta (seconds a step): the optimizer must only
    # ever be given dense gradients.
    build = lambda seed: cfkeras.models.bag_of_embeddings_classifier(30, embedding_dim=4)
    ensemble = stacked_ensemble(build, 2)
    optimizer = keras.optimizers.Adadelta(1.0, rho=0.9, epsilon=1e-6)
    seen, apply = set(), optimizer.apply

    def spy(gradients, variables=None):
        seen.update(type(g).__name__ for g in gradients)
        return apply(gradients, variables)

    optimizer.apply = spy
    ensemble.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=True)
    x = np.random.default_rng(6).integers(1, 30, size=(16, 5))
    ensemble.fit(x, np.arange(16) % 2, batch_size=8, epochs=1, verbose=0)
    assert seen and "IndexedSlices" not in seen, seen


def test_members_layer_resolution_and_errors():
    members = [dense_member(seed=k, inputs=3, hidden=4) for k in range(2)]
    ensemble = StackedEnsemble(members, gs_layer="hidden")
    # "auto" needs a GS layer: on the raw inputs, a member-free GS model.
    assert cfkeras.GradientSupervisionModel(ensemble).members_layer is None
    explicit = cfkeras.GradientSupervisionModel(
        ensemble, gs_layer=GS_SPACE, members_layer="ensemble_member_logits"
    )
    config = json.loads(json.dumps(explicit.get_config()))
    assert config["members_layer"] == "ensemble_member_logits"
    with pytest.raises(ValueError, match="needs `model` and `gs_layer`"):
        cfkeras.GradientSupervisionModel(ensemble, members_layer="ensemble_member_logits")
    with pytest.raises(ValueError, match="per_label"):
        cfkeras.GradientSupervisionModel(ensemble, gs_layer=GS_SPACE, multi_label_mode="per_label")
    with pytest.raises(ValueError, match=r"\(batch, members, classes\)"):
        cfkeras.GradientSupervisionModel(
            ensemble, gs_layer=GS_SPACE, members_layer="ensemble_logits"
        )
