"""Every forward pass of a train step runs in training mode; test steps in inference mode.

Neural Structured Learning's `AdversarialRegularization` once ran its extra
(adversarial) forward pass without `training=True`, so batch normalisation and
dropout behaved as in inference there. cfkeras's trainers make several passes
a step (GS: the encoder, then the head inside the input-gradient tape; the
stacked ensemble: the ensemble and every member; CAT: CMIX/CAL's passes,
CRM's and ERM's). A `Recorder` layer placed in every part of the model
records the `training` flag of each call while the step is traced (the flag
is a Python value there, so the trace holds it, with or without XLA; CAT's
step runs eagerly here, the same Python calls).
Batch normalisation's moving statistics confirm it numerically.

The one documented exception: when the GS head itself normalises over the
batch, its input gradient is taken in inference mode (a per-example
gradient); `test_gradient_supervision_keras.py` tests that case.
"""

import keras
import numpy as np
import tensorflow as tf
from tiny_models import tiny_bert

import cfkeras
from cfkeras.encoders import LayerwiseEncoder, MeanPooling
from cfkeras.models import CounterfactualAdversarialModel, GradientSupervisionModel
from cfkeras.pairs import make_pair


class Recorder(keras.layers.Layer):
    """The identity; appends the `training` flag of every call to `flags`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flags = []

    def call(self, inputs, training=None):
        self.flags.append(training)
        return inputs


def recorders(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, Recorder)]


def traced_flags(model, run):
    """The flags recorded while `run()` traces a fresh step function."""
    for recorder in recorders(model):
        recorder.flags.clear()
    model.train_function = model.test_function = None
    run()
    return {f"{k}:{r.name}": list(r.flags) for k, r in enumerate(recorders(model))}


def assert_flags(flags, expected, minimum_calls):
    for name, recorded in flags.items():
        assert len(recorded) >= minimum_calls, (name, recorded)
        assert set(recorded) == {expected}, (name, recorded)


def dense_pairs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (np.arange(n) % 2).astype("float32")
    batch = (make_pair(x, x + 1.0), make_pair(y, 1.0 - y))
    return tf.data.Dataset.from_tensors(batch)


def recorded_mlp(seed=0, batch_norm=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = Recorder(name="input_recorder")(inputs)
    h = keras.layers.Dense(8, name="dense")(h)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("tanh", name="hidden")(h)
    h = Recorder(name="head_recorder")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    return keras.Model(inputs, outputs)


def test_gradient_supervision_train_step_is_in_training_mode_everywhere():
    gs = GradientSupervisionModel(recorded_mlp(batch_norm=True), gs_layer="hidden")
    gs.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    data = dense_pairs()
    # Encoder once, head once (inside the input-gradient tape, whose outputs
    # are also the main loss's predictions).
    assert_flags(traced_flags(gs, lambda: gs.fit(data, verbose=0)), True, 1)
    assert_flags(traced_flags(gs, lambda: gs.evaluate(data, verbose=0)), False, 1)
    # Unpaired batches (the augmentation baseline) too.
    x, y = np.ones((8, 4), "float32"), np.zeros(8, "float32")
    assert_flags(traced_flags(gs, lambda: gs.fit(x, y, batch_size=8, verbose=0)), True, 1)

    bn = gs.model.get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    gs.evaluate(data, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    gs.fit(data, verbose=0)
    assert np.any(bn.moving_mean.numpy() != before)


def test_gradient_supervision_on_an_ensemble_trains_every_member_in_training_mode():
    ensemble = cfkeras.models.stacked_ensemble(recorded_mlp, 2, gs_layer="hidden")
    gs = GradientSupervisionModel(ensemble, gs_layer="ensemble_gs_space")
    gs.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    data = dense_pairs()
    flags = traced_flags(gs, lambda: gs.fit(data, verbose=0))
    assert len(flags) == 4  # two recorders in each of two members
    assert_flags(flags, True, 1)
    assert_flags(traced_flags(gs, lambda: gs.evaluate(data, verbose=0)), False, 1)


def test_stacked_ensemble_train_step_is_in_training_mode_in_both_passes():
    ensemble = cfkeras.models.stacked_ensemble(lambda seed: recorded_mlp(seed, batch_norm=True), 2)
    ensemble.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = (np.arange(8) % 2).astype("float32")
    # The ensemble's output and each member's own loss: two passes per member.
    flags = traced_flags(ensemble, lambda: ensemble.fit(x, y, batch_size=8, verbose=0))
    assert_flags(flags, True, 2)
    assert_flags(traced_flags(ensemble, lambda: ensemble.evaluate(x, y, verbose=0)), False, 1)

    bn = ensemble.members[1].get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    ensemble.evaluate(x, y, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    ensemble.fit(x, y, batch_size=8, verbose=0)
    assert np.any(bn.moving_mean.numpy() != before)


def recorded_encoder_classifier(length=8):
    backbone = tiny_bert(length)
    encoder = LayerwiseEncoder(backbone, name="encoder")
    inputs = {key: keras.Input((None,), dtype="int32", name=key) for key in sorted(backbone.input)}
    pooled = MeanPooling(name="pooled")(encoder(inputs), inputs["padding_mask"])
    h = Recorder(name="head_recorder")(pooled)
    h = keras.layers.Dense(8, activation="tanh", name="head_hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))


def test_cat_every_pass_is_in_training_mode():
    cat = CounterfactualAdversarialModel(
        recorded_encoder_classifier(), mix_layers=(1,), warmup_epochs=0, seed=0
    )
    cat.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # tracing CAT's step costs seconds; the calls are the same
    )
    rng = np.random.default_rng(0)
    mask = np.arange(8) < rng.integers(3, 9, (8, 1))
    x = {
        "token_ids": np.where(mask, rng.integers(1, 50, (8, 8)), 0).astype("int32"),
        "segment_ids": np.zeros((8, 8), "int32"),
        "padding_mask": mask,
    }
    y = (np.arange(8) % 2).astype("int32")
    flags = traced_flags(cat, lambda: cat.fit(x, y, batch_size=8, verbose=0))
    # CAL's objective (traced in its loop and once after), CRM's pass, ERM's pass.
    assert_flags(flags, True, 4)
    assert_flags(traced_flags(cat, lambda: cat.evaluate(x, y, verbose=0)), False, 1)
