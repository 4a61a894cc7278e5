"""XLA and `GradientSupervisionModel`: same numbers with and without XLA, XLA by
default on CPU, and a training step that is traced and compiled once."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras.models import GradientSupervisionModel, bag_of_embeddings_classifier

REPO = Path(__file__).resolve().parents[2]


def _dense_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return keras.Model(inputs, outputs)


def _dense_pairs():
    rng = np.random.default_rng(0)
    x_i, x_j = rng.normal(size=(2, 16, 4)).astype("float32")
    y_i = (np.arange(16) % 2).astype("float32")
    y_j = 1 - y_i
    y_j[::4] = y_i[::4]  # some pairs carry no supervision
    with pytest.warns(UserWarning, match="4 of 16 pairs have equal labels"):
        return cfkeras.Pairs(x_i, x_j, y_i, y_j)


def _text_pairs(n=32, length=8, vocabulary=30):
    rng = np.random.default_rng(1)
    x_i = rng.integers(1, vocabulary, (n, length)).astype("int32")
    x_i[:, length // 2 :] *= rng.random((n, length - length // 2)) < 0.5  # some padding
    x_j = x_i.copy()
    x_j[:, 0] = rng.integers(1, vocabulary, n)
    y_i = rng.integers(0, 2, n).astype("float32")
    return cfkeras.Pairs(x_i, x_j, y_i, 1 - y_i)


CASES = {
    "dense": (_dense_model, "hidden", _dense_pairs),
    "text": (
        lambda: bag_of_embeddings_classifier(30, 4, sequence_length=8),
        "mean_embedding",
        _text_pairs,
    ),
}


class _StepLosses(keras.callbacks.Callback):
    """Per-step loss from Keras's running mean over the epoch's equal-size batches."""

    def on_epoch_begin(self, epoch, logs=None):
        self.mean, self.seen = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        self.steps.append(self.seen * logs["loss"] - (self.seen - 1) * self.mean)
        self.mean = logs["loss"]

    def on_train_begin(self, logs=None):
        self.steps = []


def _train(case, jit_compile, initial_weights=None, epochs=2):
    build, gs_layer, make_pairs = CASES[case]
    keras.utils.set_random_seed(0)
    gs = GradientSupervisionModel(build(), gs_layer=gs_layer, gs_weight=2.0)
    if initial_weights is not None:
        gs.set_weights(initial_weights)
    initial = [w.copy() for w in gs.get_weights()]
    gs.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", jit_compile=jit_compile
    )
    steps = _StepLosses()
    dataset = make_pairs().to_dataset(batch_size=8, seed=0)
    history = gs.fit(dataset, epochs=epochs, verbose=0, callbacks=[steps])
    assert gs.jit_compile is jit_compile
    return initial, np.array(steps.steps), history.history, gs.get_weights()


@pytest.mark.parametrize("case", sorted(CASES))
def test_xla_matches_no_xla(case):
    initial, xla_steps, xla_history, xla_weights = _train(case, jit_compile=True)
    _, steps, history, weights = _train(case, jit_compile=False, initial_weights=initial)
    assert len(steps) == len(xla_steps) == 2 * (len(CASES[case][2]()) // 8)
    max_loss = np.max(np.abs(xla_steps - steps))
    max_weight = max(np.max(np.abs(a - b)) for a, b in zip(xla_weights, weights))
    print(f"\n{case}: max |loss XLA - no XLA| = {max_loss:.2e}, max |weight| = {max_weight:.2e}")
    np.testing.assert_allclose(xla_steps, steps, atol=1e-5)
    for key in ("main_loss", "gs_loss", "gs_cosine", "gs_supervised", "gs_skipped"):
        np.testing.assert_allclose(xla_history[key], history[key], atol=1e-5, err_msg=key)
    for a, b in zip(xla_weights, weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The run trained: the weights moved well beyond the tolerance.
    assert max(np.max(np.abs(a - b)) for a, b in zip(weights, initial)) > 1e-2


# === jit_compile="auto" ===


def test_auto_jit_compile_is_xla_on_cpu():
    assert not tf.config.list_physical_devices("GPU")
    gs = GradientSupervisionModel(_dense_model(), gs_layer="hidden")
    gs.compile(optimizer="sgd", loss="binary_crossentropy")
    assert gs.jit_compile is True
    plain = _dense_model()  # Keras's own "auto": no XLA on a CPU-only machine
    plain.compile(optimizer="sgd", loss="binary_crossentropy")
    assert plain.jit_compile is False


def test_auto_jit_compile_off_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        gs = GradientSupervisionModel(_dense_model(), gs_layer="hidden")
        gs.compile(optimizer="sgd", loss="binary_crossentropy")
    assert gs.jit_compile is False
    # Compiled (not built) under the scope is enough.
    gs = GradientSupervisionModel(_dense_model(), gs_layer="hidden")
    with strategy.scope():
        gs.compile(optimizer="sgd", loss="binary_crossentropy")
    assert gs.jit_compile is False


# === One trace, one compilation ===


class _CountingModel(GradientSupervisionModel):
    """Counts Python executions of `train_step`: one per trace."""

    def train_step(self, data):
        self.traces += 1
        return super().train_step(data)


def test_step_traced_once_over_epochs():
    keras.utils.set_random_seed(0)
    gs = _CountingModel(_dense_model(), gs_layer="hidden")
    gs.traces = 0
    gs.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    assert gs.jit_compile is True
    dataset = _dense_pairs().to_dataset(batch_size=6, seed=0)  # 16 pairs: drops a batch of 4
    assert dataset.element_spec[0]["original"].shape[0] == 6
    gs.fit(dataset, epochs=4, verbose=0)
    assert gs.traces == 1


_XLA_COUNT_SCRIPT = textwrap.dedent(
    """
    import glob, json, sys, warnings
    warnings.simplefilter("ignore")
    import keras
    import numpy as np
    import cfkeras

    rng = np.random.default_rng(1)
    x_i = rng.integers(1, 30, (32, 8)).astype("int32")
    x_i[:, 4:] *= rng.random((32, 4)) < 0.5
    x_j = x_i.copy()
    x_j[:, 0] = rng.integers(1, 30, 32)
    y_i = rng.integers(0, 2, 32).astype("float32")
    pairs = cfkeras.Pairs(x_i, x_j, y_i, 1 - y_i)

    class Counting(cfkeras.GradientSupervisionModel):
        traces = 0

        def train_step(self, data):
            Counting.traces += 1
            return super().train_step(data)

    keras.utils.set_random_seed(0)
    model = cfkeras.models.bag_of_embeddings_classifier(30, 4, sequence_length=8)
    gs = Counting(model, gs_layer="mean_embedding")
    optimizer = keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-6)
    gradient_types = set()
    apply = optimizer.apply

    def spy(gradients, variables=None):  # records what the optimizer is given
        gradient_types.update(type(g).__name__ for g in gradients)
        return apply(gradients, variables)

    optimizer.apply = spy
    gs.compile(optimizer=optimizer, loss="binary_crossentropy")
    dataset = pairs.to_dataset(batch_size=8, seed=0)
    gs.fit(dataset, epochs=1, verbose=0)
    first_epoch_traces = Counting.traces
    gs.fit(dataset, epochs=2, verbose=0)
    modules = glob.glob(sys.argv[1] + "/*one_step_on_data*.before_optimizations.txt")
    print(json.dumps({"jit_compile": gs.jit_compile, "traces": Counting.traces,
                      "first_epoch_traces": first_epoch_traces, "steps": 3 * 4,
                      "xla_compilations": len(modules), "gradients": sorted(gradient_types)}))
    """
)


def test_adadelta_embedding_step_compiles_once_with_xla(tmp_path):
    """Adadelta on the embedding model: traced and XLA-compiled once.

    XLA compilations are counted from an HLO dump, so in a fresh process. An
    embedding's gradient is an `IndexedSlices`; given to Adadelta as is, the
    step is recompiled by XLA at every step (without a new trace), hence the
    check that the optimizer only gets dense gradients.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = f"--xla_dump_to={tmp_path} --xla_dump_hlo_as_text"
    result = subprocess.run(
        [sys.executable, "-c", _XLA_COUNT_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["jit_compile"] is True
    # Without a strategy Keras builds the optimizer's slots during the first
    # trace, so tf.function traces twice (a plain keras.Model does the same);
    # never again after the first epoch.
    assert counts["first_epoch_traces"] <= 2
    assert counts["traces"] == counts["first_epoch_traces"], counts
    assert "IndexedSlices" not in counts["gradients"], counts
    assert counts["xla_compilations"] == 1, counts


# Host transfers and host callbacks in XLA's HLO: none may appear in a step
# that must run unchanged on GPU/TPU.
_HOST_HLO = ("infeed", "outfeed", "send(", "recv(", "callback", "py_func", "host")


def _nli_ensemble_case():
    from cfkeras.models.ensemble import GS_SPACE, stacked_ensemble
    from cfkeras.models.nli_classifier import GS_LAYER, nli_classifier

    build = lambda seed: nli_classifier(  # noqa: E731
        20, embedding_dim=6, projection_dim=4, hidden_units=(8,), sequence_length=5
    )
    ensemble = stacked_ensemble(build, 2, gs_layer=GS_LAYER)
    rng = np.random.default_rng(0)
    tokens = lambda: {  # noqa: E731
        s: rng.integers(1, 20, (8, 5)).astype("int32") for s in ("premise", "hypothesis")
    }
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    pairs = cfkeras.Pairs(tokens(), tokens(), labels, np.roll(labels, 1, axis=-1))
    return ensemble, GS_SPACE, pairs


@pytest.mark.parametrize("case", ["dense", "text", "nli_ensemble"])
def test_compiled_step_has_no_host_round_trips(case):
    """The whole GS step (both tapes, the optimizer, the metrics) lowers to
    one XLA computation without host transfers or callbacks: nothing in it is
    CPU-only, so the same step runs on GPU/TPU."""
    keras.utils.set_random_seed(0)
    if case == "nli_ensemble":
        model, gs_layer, pairs = _nli_ensemble_case()
        loss, task = "binary_crossentropy", "multiclass"
    else:
        build, gs_layer, make_pairs = CASES[case]
        model, pairs, loss, task = build(), make_pairs(), "binary_crossentropy", "auto"
    gs = GradientSupervisionModel(model, gs_layer=gs_layer, gs_weight=1.0, task=task)
    gs.compile(optimizer=cfkeras.optimizers.Adadelta(1.0), loss=loss, metrics=["accuracy"])
    batch = next(iter(pairs.to_dataset(batch_size=4, seed=0)))
    gs.optimizer.build(gs.trainable_variables)
    step = tf.function(gs.train_step, jit_compile=True)
    hlo = step.experimental_get_compiler_ir(batch)(stage="optimized_hlo").lower()
    assert "dot(" in hlo or "convolution(" in hlo  # the real step, not an empty stub
    found = [token for token in _HOST_HLO if token in hlo]
    assert not found, f"host round-trips in the compiled GS step: {found}"
    logs = step(batch)
    assert np.isfinite(float(logs["loss"]))
