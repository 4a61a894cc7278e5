"""The seed generators' states (dropout) saved with a trainer's weights.

Keras's weights files and `.keras` archives leave them out, so a run resumed
from a checkpoint would draw other dropout masks; cfkeras's trainers and the
stacked ensemble write them beside their own variables.
"""

import keras
import numpy as np
import pytest

import cfkeras
from cfkeras.models import trainer


def dropout_model(name="model"):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dropout(0.5)(hidden))
    return keras.Model(inputs, outputs, name=name)


def trained(kind):
    if kind == "gs":
        model = cfkeras.GradientSupervisionModel(dropout_model(), gs_layer="hidden")
    else:
        model = cfkeras.models.stacked_ensemble(lambda k: dropout_model(f"m{k}"), 2)
    model.compile(optimizer="sgd", loss="binary_crossentropy", run_eagerly=True)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = (np.arange(8) % 2).astype("float32")
    data = cfkeras.Pairs(x, -x, y, 1 - y)
    data = data.to_dataset(4, seed=0) if kind == "gs" else data.flatten(4, seed=0)
    model.fit(data, epochs=1, verbose=0)
    return model


def states(model):
    return [s.numpy().tolist() for s in trainer.random_states(model)]


@pytest.mark.parametrize("kind", ["gs", "ensemble"])
def test_weights_files_and_keras_archives_keep_the_random_states(tmp_path, kind):
    keras.utils.set_random_seed(0)
    model, other = trained(kind), trained(kind)
    expected = states(model)
    assert len(expected) == (1 if kind == "gs" else 2) and expected != states(other)
    model.save_weights(tmp_path / "w.weights.h5")
    other.load_weights(tmp_path / "w.weights.h5")
    assert states(other) == expected
    model.save(tmp_path / "m.keras")
    assert states(keras.models.load_model(tmp_path / "m.keras")) == expected


def test_a_file_without_random_states_still_loads(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model, other = trained("gs"), trained("gs")
    before = states(other)
    monkeypatch.setattr(trainer, "save_random_states", lambda model, store: None)
    model.save_weights(tmp_path / "old.weights.h5")
    other.load_weights(tmp_path / "old.weights.h5")
    assert states(other) == before
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
