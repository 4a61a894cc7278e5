"""Contract test: the private Keras names cfkeras relies on (`cfkeras._keras_private`).

If one of these fails after a Keras upgrade, XLA or the compiled metrics of
the trainers would otherwise turn off silently, or a loss would be scaled
wrongly under tf.distribute.
"""

import ast
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras import _keras_private


def test_every_private_name_exists_with_the_signature_relied_on():
    assert _keras_private.contract() == {}


def test_setup_bounds_keras_to_the_tested_range():
    setup = (pathlib.Path(cfkeras.__file__).parents[1] / "setup.py").read_text()
    assert f'"keras{_keras_private.TESTED_KERAS}"' in setup
    low, high = (part.lstrip("<>=") for part in _keras_private.TESTED_KERAS.split(","))
    version = tuple(int(p) for p in keras.version().split(".")[:2])
    assert (
        tuple(int(p) for p in low.split(".")[:2])
        <= version
        < tuple(int(p) for p in high.split(".")[:2])
    )


class HookRecorder(keras.Model):
    """A tiny model that records whether Keras calls the overridden hooks."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.calls = []

    def call(self, x):
        return self.dense(x)

    def _resolve_auto_jit_compile(self):
        self.calls.append("_resolve_auto_jit_compile")
        return super()._resolve_auto_jit_compile()

    def _symbolic_build(self, iterator=None, data_batch=None):
        self.calls.append("_symbolic_build")
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        self.calls.append("_maybe_symbolic_build")
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def test_keras_still_calls_the_overridden_hooks():
    # Keras builds metrics symbolically only under a distribution strategy,
    # which is where cfkeras's override matters.
    with tf.distribute.MirroredStrategy(["CPU:0"]).scope():
        model = HookRecorder()
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"], jit_compile="auto")
    assert "_resolve_auto_jit_compile" in model.calls
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    assert "_symbolic_build" in model.calls
    assert set(model.calls) == set(_keras_private.OVERRIDDEN_HOOKS)


def test_a_cfkeras_trainer_resolves_auto_to_xla_through_the_hook():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    gs = cfkeras.GradientSupervisionModel(model)
    gs.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile="auto")
    assert gs.jit_compile is True  # Keras's own "auto" says False on CPU


def test_a_missing_symbol_fails_at_use_naming_the_keras_version(monkeypatch):
    monkeypatch.setitem(
        _keras_private._FUNCTIONS,
        "model_supports_jit",
        ("keras.src.trainers.no_such_module", ("model",)),
    )
    with pytest.raises(RuntimeError, match=f"Keras {keras.version()}.*keras>=") as error:
        _keras_private.model_supports_jit(None)
    assert "no_such_module.model_supports_jit" in str(error.value)
    with pytest.raises(RuntimeError, match="_compute_loss"):
        _keras_private.compute_loss(object(), None, None, None, None, True)


def test_no_module_outside_the_door_touches_keras_private_names():
    # `keras.src` and the private model members are named only in _keras_private.py.
    package = pathlib.Path(cfkeras.__file__).parent
    private = set(_keras_private._MEMBERS) | set(_keras_private._ATTRIBUTES) | {"_keras_history"}
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_keras_private.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
                offenders.append(f"{path.name}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Attribute) and node.attr == "src":
                offenders.append(f"{path.name}:{node.lineno} keras.src")
    assert offenders == []
