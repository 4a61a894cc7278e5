"""Keras contract of `GradientSupervisionModel`: saving, config, SavedModel export,
evaluate/predict on paired and unpaired data, batch norm, constructor errors and
the detection of the output activation."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.models import GradientSupervisionModel

GS_KEYS = {
    "loss",
    "main_loss",
    "gs_loss",
    "gs_cosine",
    "gs_supervised",
    "gs_skipped",
    "pair_accuracy",
    "flip_rate",
    "accuracy",
}
# Non-default settings, so that a round trip that drops one is seen.
GS_SETTINGS = {
    "gs_weight": 0.5,
    "class_selection": "ground_truth",
    "class_weights": [2.0],
    "both_directions": False,
    "stop_target_gradient": True,
    "min_relative_distance": 1e-4,
}


# === Data and models ===


def binary_pairs(n, seed=0, equal=(), dims=4):
    """`n` pairs of float vectors, labels 0/1 alternating, flipped except at `equal`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dims)).astype("float32")
    x_cf = (x + rng.normal(size=(n, dims))).astype("float32")
    y = (np.arange(n) % 2).astype("float32")
    y_cf = 1.0 - y
    y_cf[list(equal)] = y[list(equal)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equal-label pairs are intended
        return cfkeras.pairs.Pairs(x, x_cf, y, y_cf)


def mlp(name="mlp", batch_norm=None):
    """4 -> Dense(8) "hidden" -> Dense(1, sigmoid) "out"; optional BN before/after "hidden"."""
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(8, name="dense")(inputs)
    if batch_norm == "encoder":
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu", name="hidden")(h)
    if batch_norm == "head":
        h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    return keras.Model(inputs, outputs, name=name)


def build(kind, **settings):
    """(a) "gs_layer": model + gs_layer; (b) "encoder_head"; (c) "inputs": gs_layer=None."""
    keras.utils.set_random_seed(0)
    if kind == "gs_layer":
        return GradientSupervisionModel(mlp(), gs_layer="hidden", **settings)
    if kind == "encoder_head":
        inputs = keras.Input((4,))
        encoder = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs), name="enc")
        space = keras.Input((8,))
        head = keras.Model(space, keras.layers.Dense(1, activation="sigmoid")(space), name="head")
        return GradientSupervisionModel(encoder=encoder, head=head, **settings)
    return GradientSupervisionModel(mlp(), gs_layer=None, **settings)


def compiled(gs):
    gs.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return gs


def json_round_trip(config):
    return json.loads(json.dumps(config))


KINDS = ("gs_layer", "encoder_head", "inputs")


# === Saving and config ===


@pytest.mark.parametrize("kind", KINDS)
def test_keras_file_round_trip(kind, tmp_path):
    pairs = binary_pairs(16)
    data = pairs.to_dataset(batch_size=8, seed=0)
    gs = compiled(build(kind, **GS_SETTINGS))
    gs.fit(data, epochs=1, verbose=0)
    path = tmp_path / "gs.keras"
    gs.save(path)

    loaded = keras.saving.load_model(path)
    assert type(loaded) is GradientSupervisionModel
    x = pairs.original
    np.testing.assert_allclose(loaded.predict(x, verbose=0), gs.predict(x, verbose=0), atol=1e-6)
    assert json_round_trip(loaded.get_config()) == json_round_trip(gs.get_config())
    for key, value in GS_SETTINGS.items():
        assert getattr(loaded, key) == value, key
    assert loaded.gs_layer == gs.gs_layer
    # Compiled again from the saved compile config: trains on, with XLA.
    history = loaded.fit(data, epochs=1, verbose=0)
    assert set(history.history) == GS_KEYS
    assert loaded.jit_compile is True


@pytest.mark.parametrize("kind", KINDS)
def test_config_json_round_trip(kind):
    gs = build(kind, **GS_SETTINGS)
    config = json_round_trip(gs.get_config())
    revived = GradientSupervisionModel.from_config(config)
    assert json_round_trip(revived.get_config()) == config
    # from_config leaves its argument intact: one config can build several models.
    again = GradientSupervisionModel.from_config(config)
    assert json_round_trip(again.get_config()) == config
    assert revived.gs_layer == gs.gs_layer
    assert (revived.encoder is None) == (gs.encoder is None)
    for key, value in GS_SETTINGS.items():
        assert getattr(revived, key) == value, key
    # The registered name round-trips through serialize/deserialize too.
    serialized = json_round_trip(keras.saving.serialize_keras_object(gs))
    assert serialized["registered_name"] == "cfkeras>GradientSupervisionModel"
    assert type(keras.saving.deserialize_keras_object(serialized)) is GradientSupervisionModel


# === SavedModel export ===


def check_served(served, expected):
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)


def test_export_after_fit_serves_unpaired_inputs(tmp_path):
    pairs = binary_pairs(16)
    gs = compiled(build("gs_layer"))
    gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=1, verbose=0)
    gs.export(tmp_path / "served", verbose=False)

    revived = tf.saved_model.load(str(tmp_path / "served"))
    for x in (pairs.original[:5], pairs.counterfactual):  # two batch sizes
        check_served(revived.serve(x), gs.predict(x, verbose=0))


def test_export_multi_input_dict_model(tmp_path):
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(
        keras.layers.Concatenate()([a, b])
    )
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    gs = GradientSupervisionModel(keras.Model({"a": a, "b": b}, outputs), gs_layer="hidden")
    gs.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = {
        "a": rng.normal(size=(16, 3)).astype("float32"),
        "b": rng.normal(size=(16, 2)).astype("float32"),
    }
    x_cf = {key: (value + 1.0).astype("float32") for key, value in x.items()}
    y = np.arange(16) % 3
    pairs = cfkeras.pairs.Pairs(x, x_cf, y, (y + 1) % 3)
    gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=1, verbose=0)
    gs.export(tmp_path / "served", verbose=False)

    revived = tf.saved_model.load(str(tmp_path / "served"))
    for size in (16, 3):
        batch = {key: value[:size] for key, value in x.items()}
        check_served(revived.serve(batch), gs.predict(batch, verbose=0))


# === evaluate, predict and the trackers ===


@pytest.fixture(scope="module")
def trained():
    """A model fit for 2 epochs with paired validation, and its data."""
    pairs = binary_pairs(32, equal=(3,))
    gs = compiled(build("gs_layer"))
    history = gs.fit(
        pairs.to_dataset(batch_size=8, seed=0),
        validation_data=pairs.to_dataset(batch_size=16, shuffle=False),
        epochs=2,
        verbose=0,
    )
    return gs, history.history, pairs


def test_train_and_validation_report_the_same_keys(trained):
    _, history, _ = trained
    train = {key for key in history if not key.startswith("val_")}
    assert train == GS_KEYS
    assert {key[len("val_") :] for key in history if key.startswith("val_")} == train


def test_validation_values_are_real(trained):
    _, history, _ = trained
    assert history["val_gs_loss"][-1] > 0
    assert -1 < history["val_gs_cosine"][-1] < 1 and history["val_gs_cosine"][-1] != 0
    np.testing.assert_allclose(
        history["val_gs_loss"][-1], 1 - history["val_gs_cosine"][-1], rtol=1e-5
    )
    # One of 32 pairs has equal labels: 62 of 64 points are supervised.
    np.testing.assert_allclose(history["val_gs_supervised"][-1], 62 / 64, rtol=1e-6)
    assert history["val_gs_skipped"][-1] == 0
    assert history["val_main_loss"][-1] > 0
    # `loss` averages each batch's `main + gs_weight * gs`, whose GS term is a mean over
    # that batch's supervised points: not exactly the sum of the two epoch means.
    gs_part = history["val_loss"][-1] - history["val_main_loss"][-1]
    np.testing.assert_allclose(gs_part, history["val_gs_loss"][-1], rtol=1e-2)


def test_evaluate_unpaired_and_paired(trained):
    gs, _, pairs = trained
    unpaired = gs.evaluate(pairs.original, pairs.label, batch_size=8, return_dict=True, verbose=0)
    assert set(unpaired) == {"loss", "main_loss", "accuracy"}
    assert unpaired["loss"] == unpaired["main_loss"] > 0
    paired = gs.evaluate(
        pairs.to_dataset(batch_size=16, shuffle=False), return_dict=True, verbose=0
    )
    assert set(paired) == GS_KEYS
    assert paired["gs_loss"] > 0 and paired["gs_supervised"] > 0


def test_predict_unpaired_and_paired(trained):
    gs, _, pairs = trained
    x, x_cf = pairs.original, pairs.counterfactual
    expected = gs.model.predict(x, verbose=0)
    np.testing.assert_allclose(gs.predict(x, verbose=0), expected, atol=1e-6)
    paired = gs.predict({"original": x, "counterfactual": x_cf}, batch_size=8, verbose=0)
    assert set(paired) == {"original", "counterfactual"}
    np.testing.assert_allclose(paired["original"], expected, atol=1e-6)
    np.testing.assert_allclose(
        paired["counterfactual"], gs.model.predict(x_cf, verbose=0), atol=1e-6
    )


def test_evaluate_keeps_the_last_partial_batch():
    # 488 pairs (the size of the CAD test split) at 32 a batch: the last batch has 8.
    pairs = binary_pairs(488, seed=1)
    gs = compiled(build("inputs"))
    logs = gs.evaluate(pairs.to_dataset(batch_size=32, shuffle=False), return_dict=True, verbose=0)

    p = gs.model.predict(np.concatenate([pairs.original, pairs.counterfactual]), verbose=0)[:, 0]
    y = np.concatenate([pairs.label, pairs.counterfactual_label])
    decided = (p > 0.5).astype("float32")
    np.testing.assert_allclose(logs["accuracy"], np.mean(decided == y), rtol=1e-6)
    right = (decided == y).reshape(2, -1)
    np.testing.assert_allclose(logs["pair_accuracy"], np.mean(right[0] & right[1]), rtol=1e-6)
    np.testing.assert_allclose(
        logs["flip_rate"], np.mean(decided[:488] != decided[488:]), rtol=1e-6
    )
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(logs["main_loss"], bce, rtol=1e-4)
    np.testing.assert_allclose(logs["gs_supervised"], 1.0)
    # gs_cosine: the mean over all 976 points, as one batch of 488 pairs gives it.
    x, y_pair = next(iter(pairs.to_dataset(batch_size=488, shuffle=False)))
    _, stats = gs.compute_pair_losses(x, y_pair)
    np.testing.assert_allclose(logs["gs_cosine"], float(stats["gs_cosine"][0]), rtol=1e-5)


# === Batch normalisation ===


def numpy_cosines(gradient, h):
    """Cosine of each row of `gradient` with the partner's row of `h` minus its own."""
    n = len(h) // 2
    t = np.concatenate([h[n:] - h[:n], h[:n] - h[n:]])
    return np.sum(gradient * t, -1) / (
        np.linalg.norm(gradient, axis=-1) * np.linalg.norm(t, axis=-1)
    )


def test_batch_norm_in_the_head_takes_the_gradient_in_inference_mode():
    pairs = binary_pairs(16)
    keras.utils.set_random_seed(0)
    gs = compiled(GradientSupervisionModel(mlp(batch_norm="head"), gs_layer="hidden"))
    gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=2, verbose=0)

    x, y = next(iter(pairs.to_dataset(batch_size=16, shuffle=False)))
    bn, out = gs.model.get_layer("bn"), gs.model.get_layer("out")
    scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)  # before the call
    _, stats = gs.compute_pair_losses(x, y, training=True)

    h = gs.encoder.predict(np.concatenate([pairs.original, pairs.counterfactual]), verbose=0)
    sign = np.concatenate(
        [
            pairs.counterfactual_label - pairs.label,
            pairs.label - pairs.counterfactual_label,
        ]
    )
    # d(sign * logit)/dh through BN with moving statistics and the linear output.
    gradient = sign[:, None] * (scale * out.kernel.numpy()[:, 0])[None, :]
    expected = numpy_cosines(np.broadcast_to(gradient, h.shape), h)
    cosines = stats["gs_cosine_per_point"].numpy()
    np.testing.assert_allclose(cosines, expected, atol=1e-5)

    # The training-mode (batch statistics) gradient is a different one.
    h_tensor = tf.constant(h)
    with tf.GradientTape() as tape:
        tape.watch(h_tensor)
        logits = tf.matmul(bn(h_tensor, training=True), out.kernel) + out.bias
        contrast = tf.reduce_sum(sign[:, None] * logits)
    batch_mode = numpy_cosines(tape.gradient(contrast, h_tensor).numpy(), h)
    assert np.max(np.abs(batch_mode - cosines)) > 1e-2
    # ... and the one of the main loss, whose predictions use training mode.
    np.testing.assert_allclose(stats["y_pred"].numpy(), tf.sigmoid(logits).numpy(), atol=1e-5)


def test_batch_norm_in_the_encoder_is_allowed():
    pairs = binary_pairs(16)
    keras.utils.set_random_seed(0)
    gs = compiled(GradientSupervisionModel(mlp(batch_norm="encoder"), gs_layer="hidden"))
    history = gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=1, verbose=0)
    assert history.history["gs_supervised"][-1] > 0
    assert np.isfinite(history.history["gs_loss"][-1])


# === Constructor errors ===


def skip_connection_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, name="hidden")(inputs)
    merged = keras.layers.Concatenate()([hidden, inputs])
    return keras.Model(inputs, keras.layers.Dense(1)(merged))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            lambda: {"model": mlp(), "gs_layer": "nope"},
            r"no such layer; its layers are \['x', 'dense', 'hidden', 'out'\]",
        ),
        (
            lambda: {"model": skip_connection_model(), "gs_layer": "hidden"},
            "does not separate",
        ),
        (
            lambda: {"model": mlp(), "encoder": mlp(), "head": mlp()},
            "either `model` or",
        ),
        (
            lambda: {"model": mlp(), "class_selection": "all"},
            "class_selection must be one of",
        ),
        (lambda: {"model": mlp(), "task": "regression"}, "task must be one of"),
        (
            lambda: {"model": mlp(), "multi_label_mode": "max"},
            "multi_label_mode must be one of",
        ),
        (lambda: {"model": mlp(), "gs_weight": -1.0}, "gs_weight must be >= 0"),
    ],
    ids=[
        "unknown_layer",
        "skip_connection",
        "model_and_encoder",
        "class_selection",
        "task",
        "multi_label_mode",
        "gs_weight",
    ],
)
def test_bad_arguments_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        GradientSupervisionModel(**arguments())


# === Output activation ===


def test_softmax_output_uses_logits_for_gs_and_probabilities_for_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(inputs))
    gs = GradientSupervisionModel(model, gs_layer=None)
    gs.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, x_cf = rng.normal(size=(2, 6, 4)).astype("float32")
    y, y_cf = np.array([0, 1, 2, 0, 1, 2]), np.array([1, 2, 0, 2, 0, 1])
    x_all = np.concatenate([x, x_cf])

    _, stats = gs.compute_pair_losses(
        {"original": x, "counterfactual": x_cf}, {"original": y, "counterfactual": y_cf}
    )
    expected = model.predict(x_all, verbose=0)
    np.testing.assert_allclose(stats["y_pred"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(gs(x_all).numpy(), expected, atol=1e-6)
    assert model.get_layer("out").activation is keras.activations.softmax  # restored

    # Linear logits f = x W + b: the contrast f_{y_cf} - f_y has gradient W[:, y_cf] - W[:, y].
    kernel = model.get_layer("out").kernel.numpy()
    labels, partners = np.concatenate([y, y_cf]), np.concatenate([y_cf, y])
    gradient = (kernel[:, partners] - kernel[:, labels]).T
    np.testing.assert_allclose(
        stats["gs_cosine_per_point"].numpy(), numpy_cosines(gradient, x_all), atol=1e-5
    )


def test_sigmoid_output_is_applied_once():
    gs = compiled(build("inputs"))
    pairs = binary_pairs(8)
    x, y = next(iter(pairs.to_dataset(batch_size=8, shuffle=False)))
    x_all = np.concatenate([pairs.original, pairs.counterfactual])
    expected = gs.model(x_all).numpy()
    assert np.all((expected > 0) & (expected < 1))
    _, stats = gs.compute_pair_losses(x, y)
    np.testing.assert_allclose(stats["y_pred"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(gs(x_all).numpy(), expected, atol=1e-6)
    assert gs.model.get_layer("out").activation is keras.activations.sigmoid  # restored
