"""`cfkeras.optimizers.Adadelta` against Keras's and a NumPy AdaDelta."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.optimizers import Adadelta

RHO, EPS, LR = 0.9, 1e-6, 1.0


def numpy_adadelta(w, gradients, rho=RHO, eps=EPS, lr=LR):
    """Zeiler (2012), float64."""
    w = w.astype(np.float64)
    eg, ed = np.zeros_like(w), np.zeros_like(w)
    for g in gradients:
        g = g.astype(np.float64)
        eg = rho * eg + (1 - rho) * g**2
        delta = g * np.sqrt(ed + eps) / np.sqrt(eg + eps)
        ed = rho * ed + (1 - rho) * delta**2
        w = w - lr * delta
    return w


def run(optimizer, w, gradients, jit_compile):
    variable = keras.Variable(w)
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply([g], [variable]), jit_compile=jit_compile)
    for g in gradients:
        step(tf.constant(g))
    return variable.numpy(), [v.numpy() for v in optimizer.variables[1:]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_matches_keras_and_numpy(jit_compile):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 7)).astype("float32")
    # Gradients of mixed scales, and rows that get no gradient (as an
    # embedding's unused rows) at some steps.
    gradients = []
    for _ in range(25):
        g = rng.normal(size=w.shape).astype("float32") * 10.0 ** rng.integers(-4, 1)
        g[rng.random(len(g)) < 0.3] = 0.0
        gradients.append(g)
    ours, our_slots = run(Adadelta(LR, rho=RHO, epsilon=EPS), w, gradients, jit_compile)
    keras_w, keras_slots = run(
        keras.optimizers.Adadelta(LR, rho=RHO, epsilon=EPS), w, gradients, jit_compile
    )
    reference = numpy_adadelta(w, gradients)
    step_size = np.abs(reference - w).max()
    assert step_size > 1e-3  # the weights moved
    # Float32 rounding of the weights themselves (|w| ~ 1) plus 1e-5 of a step.
    tolerance = dict(rtol=1e-6, atol=1e-5 * step_size)
    np.testing.assert_allclose(ours, reference, **tolerance)
    np.testing.assert_allclose(keras_w, reference, **tolerance)
    np.testing.assert_allclose(ours, keras_w, **tolerance)
    for a, b in zip(our_slots, keras_slots):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)


def test_config_round_trip_and_keras_checkpoint(tmp_path):
    optimizer = Adadelta(learning_rate=0.5, rho=0.8, epsilon=1e-5)
    config = keras.optimizers.serialize(optimizer)
    revived = keras.optimizers.deserialize(config)
    assert type(revived) is Adadelta
    assert revived.get_config() == optimizer.get_config()
    # The slots are Keras's: a model saved with one optimizer loads with the other.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=Adadelta(), loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is Adadelta
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_trains_a_gradient_supervision_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    gs = cfkeras.GradientSupervisionModel(model, gs_weight=1.0)
    gs.compile(optimizer=Adadelta(1.0, rho=0.9, epsilon=1e-6), loss="binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    pairs = cfkeras.Pairs(x, -x, y, 1 - y)
    history = gs.fit(pairs.to_dataset(batch_size=8, seed=0), epochs=5, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_docstring_example():
    import cfkeras.optimizers as module

    results = doctest.testmod(module, extraglobs={"cfkeras": cfkeras})
    assert results.attempted > 0 and results.failed == 0
