"""Bad input to every cfkeras trainer: a clear error naming the fix, or a safe no-op.

One table, `CASES`, holds every case: what goes wrong, the trainers it
concerns and the outcome (the error's text, or the no-op and the metric that
counts it). `test_case` runs each case's check; `docs/bad_inputs.md` holds
the same table, rendered by `render_table()` and compared with it by
`test_the_docs_hold_this_table` (regenerate it with
`python tests/models/test_bad_inputs.py`). Property tests (`hypothesis`,
fixed shapes so that the compiled XLA step is reused, few examples) generate
pair batches for the `Pairs` builder and for a compiled GS step.

The compiled models are module fixtures: each is compiled once, and its
weights are reset before every use.
"""

import dataclasses
import re
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tiny_models import nested_mlp, tiny_bert

import cfkeras
from cfkeras.callbacks import PairAlignmentHistogram, TerminateOnNonFinite
from cfkeras.models import (
    CounterfactualAdversarialModel,
    GradientSupervisionModel,
    bag_of_embeddings_classifier,
    stacked_ensemble,
)
from cfkeras.pairs import Pairs, make_pair

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad_inputs.md"
LENGTH = 8
RNG = np.random.default_rng(0)


# === Models (module fixtures) ===


def mlp(seed=0, classes=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    activation = "sigmoid" if classes == 1 else "softmax"
    outputs = keras.layers.Dense(classes, activation=activation, name="out")(hidden)
    return keras.Model(inputs, outputs, name="mlp")


def softmax_encoder_classifier():
    """`encoder_classifier`'s graph with a softmax output (for losses on probabilities)."""
    backbone = tiny_bert(LENGTH)
    encoder = cfkeras.encoders.LayerwiseEncoder(backbone, name="encoder")
    inputs = {key: keras.Input((None,), dtype="int32", name=key) for key in sorted(backbone.input)}
    pooled = cfkeras.encoders.MeanPooling(name="pooled")(encoder(inputs), inputs["padding_mask"])
    hidden = keras.layers.Dense(8, activation="tanh")(pooled)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))


class Compiled:
    """A compiled trainer and its initial weights; `fresh()` resets them."""

    def __init__(self, model):
        self.model = model
        self.initial = model.get_weights()

    def fresh(self):
        self.model.set_weights(self.initial)
        return self.model


@pytest.fixture(scope="module")
def gs():
    model = GradientSupervisionModel(mlp(), gs_layer="hidden")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    return Compiled(model)


@pytest.fixture(scope="module")
def gs_softmax():
    model = GradientSupervisionModel(mlp(classes=3), gs_layer="hidden")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return Compiled(model)


@pytest.fixture(scope="module")
def gs_text():
    keras.utils.set_random_seed(0)
    text = bag_of_embeddings_classifier(20, embedding_dim=4, sequence_length=6)
    model = GradientSupervisionModel(text, gs_layer="mean_embedding")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return Compiled(model)


@pytest.fixture(scope="module")
def ensemble():
    model = stacked_ensemble(mlp, 2)
    model.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    return Compiled(model)


@pytest.fixture(scope="module")
def cat():
    classifier = cfkeras.encoders.encoder_classifier(tiny_bert(LENGTH), num_classes=2, dropout=0.0)
    model = CounterfactualAdversarialModel(
        classifier, mix_layers=(1,), cal_steps=1, warmup_epochs=0, seed=0
    )
    # Eager: tracing CAT's step costs tens of seconds; errors and values are the same.
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    return Compiled(model)


@pytest.fixture(scope="module")
def models(gs, gs_softmax, gs_text, ensemble, cat):
    return {
        "gs": gs,
        "gs_softmax": gs_softmax,
        "gs_text": gs_text,
        "ensemble": ensemble,
        "cat": cat,
    }


# === Data ===


def dense_batch(n=8, x_j=None, y_i=None, y_j=None, seed=0):
    rng = np.random.default_rng(seed)
    x_i = rng.normal(size=(n, 4)).astype("float32")
    x_j = (x_i + 1.0) if x_j is None else x_j
    y_i = (np.arange(n) % 2).astype("float32") if y_i is None else y_i
    y_j = (1.0 - y_i) if y_j is None else y_j
    return make_pair(x_i, x_j), make_pair(y_i, y_j)


def tokens(n=4, lengths=(8, 5, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(LENGTH) < np.asarray(lengths[:n])[:, None]
    return {
        "token_ids": np.where(mask, rng.integers(1, 50, (n, LENGTH)), 0).astype("int32"),
        "segment_ids": np.zeros((n, LENGTH), "int32"),
        "padding_mask": mask,
    }


def dataset(*batches):
    data = tf.data.Dataset.from_tensors(batches[0])
    for batch in batches[1:]:
        data = data.concatenate(tf.data.Dataset.from_tensors(batch))
    return data


def finite(model):
    return all(np.all(np.isfinite(w)) for w in model.get_weights())


def unchanged(model, weights):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))


def rejects(model, message, *args, **kwargs):
    """`model.fit(*args)` raises `ValueError(message)` and leaves the weights as they were."""
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.fit(*args, verbose=0, **kwargs)
    assert unchanged(model, before)


# === The cases ===


def check_mismatched_shapes(m):
    x, y = dense_batch(x_j=np.ones((8, 5), "float32"))
    rejects(m["gs"].fresh(), r"same shape and dtype.*Pad or truncate", dataset((x, y)))
    a, b = tokens(), tokens()
    b = {key: value[:, :6] for key, value in b.items()}
    labels = make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    rejects(m["cat"].fresh(), r"same shape and dtype", dataset((make_pair(a, b), labels)))
    with pytest.raises(ValueError, match="shapes differ"):
        Pairs(np.ones((4, 4)), np.ones((4, 5)), np.zeros(4), np.ones(4))


def check_mismatched_dtypes(m):
    x, y = dense_batch()
    x["counterfactual"] = x["counterfactual"].astype("float64")
    rejects(m["gs"].fresh(), r"same shape and dtype.*cast them to one dtype", dataset((x, y)))
    a, b = tokens(), tokens()
    b["token_ids"] = b["token_ids"].astype("int64")
    labels = make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    rejects(m["cat"].fresh(), r"same shape and dtype", dataset((make_pair(a, b), labels)))
    x, y = dense_batch()
    y["counterfactual"] = y["counterfactual"].astype("int32")
    rejects(
        m["gs"].fresh(), r"labels of a pair must have the same shape and dtype", dataset((x, y))
    )
    with pytest.raises(ValueError, match="dtypes differ"):
        Pairs(np.ones((4, 4), "float32"), np.ones((4, 4)), np.zeros(4), np.ones(4))


def check_ragged_text_pairs(m):
    a = tf.ragged.constant([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]])
    b = tf.ragged.constant([[1, 2], [4, 5, 6], [6, 7], [7]])
    pairs = Pairs(a, b, np.zeros(4, "float32"), np.ones(4, "float32"))
    rejects(
        m["gs_text"].fresh(),
        r"ragged \(tf.RaggedTensor\).*pad them to one length",
        pairs.to_dataset(batch_size=4),
    )
    members = [{"token_ids": t, "segment_ids": t * 0, "padding_mask": t > 0} for t in (a, b)]
    labels = make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    rejects(m["cat"].fresh(), r"ragged", dataset((make_pair(*members), labels)))


def check_text_pairs_of_different_lengths(m):
    x = make_pair(np.ones((4, 6), "int32"), np.ones((4, 8), "int32"))
    y = make_pair(np.zeros(4, "float32"), np.ones(4, "float32"))
    rejects(m["gs_text"].fresh(), r"same shape and dtype.*TextVectorization", dataset((x, y)))


def check_equal_labels(m):
    y = (np.arange(8) % 2).astype("float32")
    model = m["gs"].fresh()
    logs = model.fit(dataset(dense_batch(y_i=y, y_j=y)), verbose=0).history
    assert logs["gs_supervised"] == [0.0] and logs["gs_loss"] == [0.0]
    assert logs["loss"] == logs["main_loss"] and finite(model)
    with pytest.raises(ValueError, match="every pair has equal labels"):
        Pairs(np.ones((4, 4)), np.zeros((4, 4)), y[:4], y[:4])
    with pytest.warns(UserWarning, match="1 of 4 pairs have equal labels"):
        Pairs(np.ones((4, 4)), np.zeros((4, 4)), y[:4], np.float32([0, 0, 1, 0]))


def check_identical_inputs(m):
    x, y = dense_batch()
    x["counterfactual"] = x["original"].copy()
    model = m["gs"].fresh()
    logs = model.fit(dataset((x, y)), verbose=0).history
    assert logs["gs_skipped"] == [16.0] and logs["gs_supervised"] == [0.0]
    assert logs["loss"] == logs["main_loss"] and finite(model)


def check_nan_or_inf_inputs(m):
    x, y = dense_batch()
    x["original"][2, 1] = np.nan
    x["counterfactual"][0, 0] = np.inf
    rejects(m["gs"].fresh(), r"inputs \(original member\) contain NaN or Inf", dataset((x, y)))
    rejects(
        m["ensemble"].fresh(), r"inputs contain 1 NaN or Inf", x["counterfactual"], y["original"]
    )
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        Pairs(x["original"], x["counterfactual"], y["original"], y["counterfactual"])


def check_nan_or_inf_labels(m):
    x, y = dense_batch()
    y["counterfactual"][3] = np.inf
    rejects(
        m["gs"].fresh(), r"labels \(counterfactual member\) contain NaN or Inf", dataset((x, y))
    )
    rejects(m["ensemble"].fresh(), r"labels contain 1 NaN", x["original"], y["counterfactual"])
    with pytest.raises(ValueError, match="labels: the counterfactual member contains NaN"):
        Pairs(x["original"], x["counterfactual"], y["original"], y["counterfactual"])


def check_non_finite_later_batch(m):
    model = m["gs"].fresh()
    bad_x, bad_y = dense_batch(seed=1)
    bad_x["original"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"inputs \(original member\) contain NaN or Inf"):
        model.fit(dataset(dense_batch(), (bad_x, bad_y)), verbose=0)
    assert finite(model)  # one step on the clean first batch, none on the bad one


def generator(*batches):
    """A Python generator of the batches: data that `fit` does not check."""

    def generate():
        yield from batches

    return generate()


def check_non_finite_from_unchecked_data(m):
    model = m["gs"].fresh()
    bad_x, bad_y = dense_batch(seed=1)
    bad_x["original"][0, 0] = np.nan
    guard = TerminateOnNonFinite()
    with pytest.warns(RuntimeWarning, match=r"non-finite `main_loss` \(the main loss\)"):
        history = model.fit(
            generator(dense_batch(), (bad_x, bad_y), dense_batch()),
            steps_per_epoch=3,
            epochs=3,
            verbose=0,
            callbacks=[guard],
        )
    assert guard.terms == ("main_loss", "loss")
    assert "epoch 1, batch 1" in guard.message
    assert len(history.epoch) == 1  # stopped in the first epoch
    assert unchanged(model, m["gs"].initial)  # restored to the start of the epoch

    ensemble = m["ensemble"].fresh()
    x = np.random.default_rng(0).normal(size=(2, 8, 4)).astype("float32")
    x[1, 4] = np.inf
    y = (np.arange(8) % 2).astype("float32")
    guard = TerminateOnNonFinite()
    with pytest.warns(RuntimeWarning, match="member_0_loss"):
        ensemble.fit(
            generator((x[0], y), (x[1], y)), steps_per_epoch=2, verbose=0, callbacks=[guard]
        )
    assert "member_1_loss" in guard.terms and finite(ensemble)


def check_guard_names_the_term(m):
    for model, logs, term, name in (
        (
            m["gs"].fresh(),
            {"main_loss": 0.5, "gs_loss": np.nan, "loss": np.nan},
            "gs_loss",
            "the gradient-supervision (GS) term",
        ),
        (
            m["cat"].fresh(),
            {"main_loss": 0.5, "crm_loss": np.inf, "loss": 0.5},
            "crm_loss",
            "CAT's CRM loss",
        ),
    ):
        guard = TerminateOnNonFinite()
        guard.set_model(model)
        guard.on_train_begin()
        guard.on_epoch_begin(0)
        with pytest.warns(RuntimeWarning, match=re.escape(f"`{term}` ({name})")):
            guard.on_train_batch_end(0, logs)
        assert term in guard.terms and "main_loss" not in guard.terms
        assert model.stop_training
        model.stop_training = False


def check_all_padding_text(m):
    model = m["gs_text"].fresh()
    pad = [0] * 6
    x_i = np.array([pad, pad, [3, 4, 0, 0, 0, 0], [5, 6, 7, 0, 0, 0]], "int32")
    x_j = np.array([pad, [8, 9, 0, 0, 0, 0], [3, 10, 0, 0, 0, 0], pad], "int32")
    y = np.array([1.0, 0.0, 1.0, 0.0], "float32")
    logs = model.fit(dataset((make_pair(x_i, x_j), make_pair(y, 1 - y))), verbose=0).history
    assert logs["gs_skipped"] == [2.0] and np.isfinite(logs["loss"][0]) and finite(model)
    cat = m["cat"].fresh()
    logs = cat.fit(
        tokens(lengths=(0, 0, 4, 8)), np.array([0, 1, 0, 1]), batch_size=4, verbose=0
    ).history
    assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["crm_loss"][0]) and finite(cat)


def check_empty_dataset(m):
    x, y = dense_batch()
    for key in ("gs", "ensemble"):
        data = dataset((x, y)) if key == "gs" else dataset((x["original"], y["original"]))
        rejects(m[key].fresh(), r"training dataset is empty \(0 batches\)", data.take(0))
    unknown = dataset((x, y)).filter(lambda *_: False)
    rejects(m["gs"].fresh(), "yielded no batch", unknown)
    rejects(m["cat"].fresh(), r"empty \(0 examples\)", tokens(n=0, lengths=()), np.zeros(0))
    with pytest.raises(ValueError, match=r"empty \(0 pairs\)"):
        Pairs(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), np.zeros(0))


def check_single_examples_where_pairs_are_expected(m):
    with pytest.raises(ValueError, match="`counterfactual` is None; a pair needs both members"):
        Pairs(np.ones((4, 4)), None, np.zeros(4), np.ones(4))
    x, y = dense_batch()
    with pytest.raises(ValueError, match="pairs must hold paired inputs and labels"):
        PairAlignmentHistogram("logs", (x["original"], y["original"]))
    rejects(m["gs"].fresh(), "Paired labels need paired inputs", dataset((x["original"], y)))
    model = m["gs"].fresh()  # unpaired data: documented, main loss only
    logs = model.fit(x["original"], y["original"], batch_size=8, verbose=0).history
    assert set(logs) == {"loss", "main_loss"} and finite(model)


def check_pairs_where_single_examples_are_expected(m):
    rejects(
        m["ensemble"].fresh(),
        "take ordinary batches.*GradientSupervisionModel",
        dataset(dense_batch()),
    )
    cat = m["cat"].fresh()  # documented: both members are ordinary examples
    pair = (
        make_pair(tokens(), tokens(seed=1)),
        make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])),
    )
    logs = cat.fit(dataset(pair), verbose=0).history
    assert np.isfinite(logs["loss"][0]) and finite(cat)


def check_wrong_pair_keys(m):
    x, y = dense_batch()
    x = {"original": x["original"], "cf": x["counterfactual"]}
    rejects(
        m["gs"].fresh(), r"look like a pair but have the keys \['cf', 'original'\]", dataset((x, y))
    )
    rejects(m["ensemble"].fresh(), r"look like a pair", dataset((x, y)))
    pair = {"original": tokens(), "cf": tokens(seed=1)}
    labels = make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    rejects(m["cat"].fresh(), r"look like a pair", dataset((pair, labels)))


def check_labels_of_wrong_arity(m):
    x, _ = dense_batch()
    y = make_pair(np.ones((8, 3), "float32"), np.zeros((8, 3), "float32"))
    rejects(m["gs"].fresh(), "3 columns per example but the model has one output", dataset((x, y)))
    y = make_pair(np.eye(8, 2, dtype="float32"), np.eye(8, 2, 1, dtype="float32"))
    rejects(
        m["gs_softmax"].fresh(),
        r"2 columns per example but the model has 3 outputs",
        dataset((x, y)),
    )
    rejects(m["ensemble"].fresh(), "3 columns", x["original"], np.ones((8, 3), "float32"))
    rejects(
        m["cat"].fresh(),
        "3 columns per example but the model has 2",
        tokens(),
        np.eye(4, 3, dtype="float32"),
    )


def check_labels_out_of_range(m):
    x, y = dense_batch()
    y["original"] = y["original"] * 2
    rejects(m["gs"].fresh(), r"must be in \[0, 1\].*Map them to 0/1", dataset((x, y)))
    y = make_pair(np.arange(8) % 3 + 1, np.arange(8) % 3)
    rejects(
        m["gs_softmax"].fresh(),
        r"integer class ids in \[0, 3\).*Re-index them from 0",
        dataset((x, y)),
    )
    rejects(m["ensemble"].fresh(), r"must be in \[0, 1\]", x["original"], 2 * (np.arange(8) % 2))
    rejects(m["cat"].fresh(), r"integer class ids in \[0, 2\)", tokens(), np.array([0, 1, 2, 1]))


def check_negative_lambda(m):
    with pytest.raises(ValueError, match="gs_weight must be >= 0"):
        GradientSupervisionModel(mlp(), gs_layer="hidden", gs_weight=-1.0)
    classifier = m["cat"].model.model
    with pytest.raises(ValueError, match="alpha and beta must be > 0"):
        CounterfactualAdversarialModel(classifier, alpha=-0.3)
    with pytest.raises(ValueError, match="cal_steps and cal_step_size must be >= 0"):
        CounterfactualAdversarialModel(classifier, cal_step_size=-0.02)


def check_negative_sample_weights(m):
    x, y = dense_batch()
    weight = np.where(np.arange(8) == 3, -1.0, 1.0).astype("float32")
    rejects(m["gs"].fresh(), "sample weights must be non-negative", dataset((x, y, weight)))
    rejects(
        m["ensemble"].fresh(), "non-negative", x["original"], y["original"], sample_weight=weight
    )
    with pytest.raises(ValueError, match="finite and non-negative"):
        Pairs(x["original"], x["counterfactual"], y["original"], y["counterfactual"], weight)


def check_unknown_gs_layer(m):
    with pytest.raises(ValueError, match=r"gs_layer='nope': model 'mlp' has no such layer; its"):
        GradientSupervisionModel(mlp(), gs_layer="nope")
    with pytest.raises(ValueError, match="gs_layer='nope'.*no such layer"):
        stacked_ensemble(mlp, 2, gs_layer="nope")
    with pytest.raises(ValueError, match="No such layer: nope"):
        CounterfactualAdversarialModel(m["cat"].model.model, encoder_layer="nope")


LOSS_FORMS = {
    "gs": (
        "binary_crossentropy",
        keras.losses.binary_crossentropy,
        keras.losses.BinaryCrossentropy(),
    ),
    "ensemble": (
        "binary_crossentropy",
        keras.losses.binary_crossentropy,
        keras.losses.BinaryCrossentropy(),
    ),
    "cat": (
        "sparse_categorical_crossentropy",
        keras.losses.sparse_categorical_crossentropy,
        keras.losses.SparseCategoricalCrossentropy(),
    ),
}


def check_loss_forms(m):
    x, y = dense_batch()
    runs = {
        "gs": (lambda: GradientSupervisionModel(mlp(), gs_layer="hidden"), (dataset((x, y)),)),
        "ensemble": (lambda: stacked_ensemble(mlp, 2), (x["original"], y["original"])),
        "cat": (
            lambda: CounterfactualAdversarialModel(
                softmax_encoder_classifier(),
                mix_layers=(1,),
                cal_steps=1,
                warmup_epochs=0,
                seed=0,
            ),
            (tokens(), np.array([0, 1, 0, 1])),
        ),
    }
    # The same weights and seeds for each form (CAT's draws come from its
    # seed); eager steps (no tracing) resolve the loss as a compiled step does.
    for key, (build, data) in runs.items():
        initial, trained = None, []
        for loss in LOSS_FORMS[key]:
            model = build()
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, run_eagerly=True)
            if initial is None:
                initial = model.get_weights()
            model.set_weights(initial)
            model.fit(*data, verbose=0)
            trained.append(model.get_weights())
        for other in trained[1:]:
            for a, b in zip(trained[0], other):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=key)
        assert not unchanged(model, initial), key


def check_keras_hub_backbone(m):
    with pytest.raises(ValueError, match="has 2.*encoder_classifier"):
        GradientSupervisionModel(tiny_bert(LENGTH), gs_layer=None)
    classifier = cfkeras.encoders.encoder_classifier(tiny_bert(LENGTH), num_classes=2, dropout=0.0)
    model = GradientSupervisionModel(classifier, gs_layer="pooled")
    model.compile(
        optimizer="sgd",
        jit_compile=False,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pair = (
        make_pair(tokens(), tokens(seed=1)),
        make_pair(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])),
    )
    logs = model.fit(dataset(pair), verbose=0).history
    assert logs["gs_supervised"][0] > 0 and np.isfinite(logs["loss"][0]) and finite(model)
    cat = m["cat"].fresh()  # CAT's model is a keras-hub backbone's classifier
    assert np.isfinite(cat.fit(tokens(), np.array([0, 1, 0, 1]), verbose=0).history["loss"][0])


def check_nested_functional_model(m):
    x, y = dense_batch()
    for gs_layer in ("body", None):
        model = GradientSupervisionModel(nested_mlp(), gs_layer=gs_layer)
        model.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
        logs = model.fit(dataset((x, y)), verbose=0).history
        assert logs["gs_supervised"] == [1.0] and finite(model)
    ensemble = stacked_ensemble(nested_mlp, 2)
    ensemble.compile(optimizer="sgd", loss="binary_crossentropy", jit_compile=False)
    ensemble.fit(x["original"], y["original"], verbose=0)
    assert finite(ensemble)


def check_mixed_precision_overflow(m):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = GradientSupervisionModel(mlp(), gs_layer="hidden")
        # A loss scale that overflows float16 in the backward pass, through
        # the GS term's second-order (inner-tape) gradients.
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**40
        )
        model.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=False)
        before = model.get_weights()
        guard = TerminateOnNonFinite()
        logs = model.fit(dataset(dense_batch()), epochs=2, verbose=0, callbacks=[guard]).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert guard.message is None and np.all(np.isfinite(logs["loss"]))
    assert unchanged(model, before)  # both updates skipped ...
    assert int(optimizer.iterations) == 0  # ... counted: no optimizer step taken
    assert float(optimizer.dynamic_scale) == 2.0**38  # the scale halved twice


@dataclasses.dataclass(frozen=True)
class Case:
    what: str
    trainers: str
    outcome: str
    check: object


CASES = {
    "mismatched_shapes": Case(
        "members of a pair differ in shape",
        "GS, CAT, `Pairs`",
        '`ValueError`: "The original and counterfactual inputs of a pair must have the same '
        'shape and dtype; got ... Pad or truncate both members to one length ..." (at trace '
        'time, before any update); `Pairs`: "shapes differ"',
        check_mismatched_shapes,
    ),
    "mismatched_dtypes": Case(
        "members of a pair (inputs or labels) differ in dtype",
        "GS, CAT, `Pairs`",
        '`ValueError`: "... must have the same shape and dtype ... cast them to one dtype"; '
        '`Pairs`: "dtypes differ"',
        check_mismatched_dtypes,
    ),
    "ragged_text_pairs": Case(
        "ragged text pairs (`tf.RaggedTensor`) of different lengths",
        "GS, CAT, `Pairs`",
        '`ValueError` from `fit`: "The inputs of a pair are ragged (tf.RaggedTensor) ... pad '
        "them to one length first, e.g. `ragged.to_tensor(...)` or "
        '`TextVectorization(output_sequence_length=...)`"',
        check_ragged_text_pairs,
    ),
    "text_pairs_of_different_lengths": Case(
        "token-id pairs padded to different lengths",
        "GS, CAT",
        '`ValueError`: "... same shape and dtype ... `TextVectorization(output_sequence_length'
        '=...)` ..."',
        check_text_pairs_of_different_lengths,
    ),
    "equal_labels": Case(
        "pairs whose labels are equal",
        "GS, `Pairs`",
        "safe no-op: no GS term for them (`gs_supervised` = 0, `gs_loss` = 0, `loss` = "
        '`main_loss`); `Pairs`: a warning, or `ValueError` "every pair has equal labels"',
        check_equal_labels,
    ),
    "identical_inputs": Case(
        "identical inputs with different labels",
        "GS",
        "safe no-op: not supervised, counted in `gs_skipped` (2 points a pair)",
        check_identical_inputs,
    ),
    "nan_or_inf_inputs": Case(
        "NaN or Inf in the inputs",
        "GS, ensemble, `Pairs` (CAT's inputs are token ids)",
        '`ValueError` from `fit`: "the inputs (original member) contain NaN or Inf values in a '
        'batch. Remove or impute them ..." (arrays: "contain 1 NaN or Inf values in the '
        'data"); `Pairs`: "contains NaN or Inf"',
        check_nan_or_inf_inputs,
    ),
    "nan_or_inf_labels": Case(
        "NaN or Inf in the labels",
        "GS, ensemble, `Pairs`",
        '`ValueError` from `fit`: "the labels (counterfactual member) contain NaN or Inf '
        'values in a batch ..."; `Pairs`: "labels: the counterfactual member contains NaN or '
        'Inf"',
        check_nan_or_inf_labels,
    ),
    "non_finite_later_batch": Case(
        "NaN or Inf (or labels out of range) in a later batch of a `tf.data.Dataset`",
        "GS (every trainer: the same check)",
        '`ValueError` from `fit` as the batch is read, before a step trains on it: "the inputs '
        '(original member) contain NaN or Inf values in a batch ..." (`fit` maps assertions '
        "over the dataset, in the input pipeline; it never reads the data ahead)",
        check_non_finite_later_batch,
    ),
    "non_finite_from_unchecked_data": Case(
        "a non-finite loss from data `fit` does not check (a Python generator, a "
        "`PyDataset`) or from training itself (divergence)",
        "GS, ensemble",
        "`cfkeras.callbacks.TerminateOnNonFinite` stops training, restores the weights of the "
        "epoch's start and warns: \"epoch 1, batch 1: non-finite `main_loss` (the main loss), "
        '`loss` (the total loss); training stopped ..."',
        check_non_finite_from_unchecked_data,
    ),
    "guard_names_the_term": Case(
        "one loss term goes non-finite",
        "GS, CAT (ensemble: above)",
        "`TerminateOnNonFinite` names it: `main_loss`, `gs_loss` (the GS term), `crm_loss` / "
        "`cal_objective_after` (CAT), `member_{k}_loss` (ensemble), `loss`",
        check_guard_names_the_term,
    ),
    "all_padding_text": Case(
        "all-padding text in a pair",
        "GS, CAT",
        "safe: finite losses and weights; a pair that is padding on both sides is counted in "
        "`gs_skipped`",
        check_all_padding_text,
    ),
    "empty_dataset": Case(
        "an empty dataset or empty arrays",
        "GS, ensemble, CAT, `Pairs`",
        '`ValueError` from `fit`: "the training dataset is empty (0 batches). Check the `take`, '
        '`filter`, ..." ("yielded no batch" when its size is unknown; "empty (0 '
        'examples)" for arrays); `Pairs`: "the input is empty (0 pairs)"',
        check_empty_dataset,
    ),
    "single_examples_where_pairs_are_expected": Case(
        "single examples where pairs are expected",
        "GS, `Pairs`, `PairAlignmentHistogram`",
        '`Pairs(x, None, ...)`: `ValueError` "`counterfactual` is None; a pair needs both '
        'members ..."; paired labels with single inputs: "Paired labels need paired inputs"; '
        "GS `fit` on ordinary `(x, y)`: documented, the main loss only (no `gs_*` metrics)",
        check_single_examples_where_pairs_are_expected,
    ),
    "pairs_where_single_examples_are_expected": Case(
        "pairs where single examples are expected",
        "ensemble, CAT",
        '`StackedEnsemble.fit`: `ValueError` "... take ordinary batches `(x, y)`; received '
        'pairs. For gradient supervision wrap the ensemble: `GradientSupervisionModel(...)`"; '
        "CAT: documented, both members are ordinary examples",
        check_pairs_where_single_examples_are_expected,
    ),
    "wrong_pair_keys": Case(
        "a pair dict with other keys than `original`/`counterfactual`",
        "GS, ensemble, CAT",
        "`ValueError`: \"The inputs look like a pair but have the keys ['cf', 'original']; a "
        "pair has exactly the keys 'original' and 'counterfactual'\"",
        check_wrong_pair_keys,
    ),
    "labels_of_wrong_arity": Case(
        "labels with the wrong number of columns",
        "GS, ensemble, CAT",
        '`ValueError` from `fit`: "the labels ... have 3 columns per example but the model has '
        'one output (binary) ..." / "... pass class ids, shape (batch,), or one-hot rows"',
        check_labels_of_wrong_arity,
    ),
    "labels_out_of_range": Case(
        "labels out of range (binary 2, class id >= classes, -1/1)",
        "GS, ensemble, CAT",
        '`ValueError` from `fit`: "the labels ... must be in [0, 1] ... Map them to 0/1" / '
        '"must be integer class ids in [0, 3) ... Re-index them from 0" (under XLA an '
        "out-of-range class id would otherwise give NaN weights silently)",
        check_labels_out_of_range,
    ),
    "negative_lambda": Case(
        "λ < 0 (GS's `gs_weight`; CAT's Beta parameters, CAL step)",
        "GS, CAT",
        '`ValueError` at construction: "gs_weight must be >= 0", "alpha and beta must be > '
        '0", "cal_steps and cal_step_size must be >= 0"',
        check_negative_lambda,
    ),
    "negative_sample_weights": Case(
        "negative sample weights",
        "GS, ensemble, `Pairs`",
        '`ValueError` from `fit`: "the sample weights must be non-negative"; `Pairs`: '
        '"finite and non-negative"',
        check_negative_sample_weights,
    ),
    "unknown_gs_layer": Case(
        "a GS layer name that does not exist",
        "GS, ensemble, CAT",
        "`ValueError` at construction: \"gs_layer='nope': model 'mlp' has no such layer; its "
        'layers are [...]"; CAT: Keras\'s "No such layer: nope. Existing layers are ..."',
        check_unknown_gs_layer,
    ),
    "loss_forms": Case(
        "the loss as a string, a function or a `keras.losses.Loss`",
        "GS, ensemble, CAT",
        "all three train to the same weights",
        check_loss_forms,
    ),
    "keras_hub_backbone": Case(
        "a keras-hub backbone as the wrapped model",
        "GS, CAT",
        'the bare backbone (two outputs): `ValueError` "cfkeras trains models with one output; '
        '... wrap it in a classifier first, e.g. `cfkeras.encoders.encoder_classifier(...)`"; '
        "its classifier trains (inputs inferred from the backbone)",
        check_keras_hub_backbone,
    ),
    "nested_functional_model": Case(
        "a nested functional model as the wrapped model (GS space at the nested model)",
        "GS, ensemble",
        "trains (fixed: the split used the nested model's inner output, a Keras \"not "
        'connected" error)',
        check_nested_functional_model,
    ),
    "mixed_precision_overflow": Case(
        "non-finite gradients under mixed precision (loss scaling through the inner tape)",
        "GS",
        "safe no-op: `LossScaleOptimizer` skips the update (weights unchanged; "
        "`optimizer.iterations` does not advance) and halves `optimizer.dynamic_scale`",
        check_mixed_precision_overflow,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_case(case, models):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pairs' equal-label warnings
        warnings.simplefilter("default", RuntimeWarning)
        CASES[case].check(models)


def test_fit_checks_a_dataset_without_reading_it_ahead(gs):
    # A peek at the first batch would start an extra iteration: a dataset
    # reshuffled every iteration would then train on another order.
    reads = []

    def read(index):
        reads.append(int(index))
        return index

    x, y = dense_batch()
    data = tf.data.Dataset.range(1).map(lambda i: tf.py_function(read, [i], tf.int64))
    gs.fresh().fit(data.map(lambda i: (x, y)), epochs=2, verbose=0)
    assert reads == [0, 0]  # once an epoch
    # Two identical datasets, reshuffled every iteration: checking one does not
    # change the order of its first epoch.
    make = lambda: tf.data.Dataset.range(8).shuffle(8, seed=0).batch(8)  # noqa: E731
    first = next(iter(make())).numpy().tolist()
    checked = cfkeras.validation.checked_training_data(gs.model, make().map(lambda i: (i, i % 2)))
    assert next(iter(checked))[0].numpy().tolist() == first


# === The docs ===

TABLE_START, TABLE_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


def render_table():
    rows = ["| case | what goes wrong | trainers | outcome |", "|---|---|---|---|"]
    for name, case in CASES.items():
        outcome = case.outcome.replace("|", "\\|")
        rows.append(f"| `{name}` | {case.what} | {case.trainers} | {outcome} |")
    return "\n".join(rows)


def test_the_docs_hold_this_table():
    text = DOCS.read_text(encoding="utf-8")
    table = text.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert table == render_table(), (
        "docs/bad_inputs.md is out of date: run `python tests/models/test_bad_inputs.py`"
    )


# === Properties ===

finite_floats = st.floats(-10, 10, width=32)
any_floats = st.one_of(finite_floats, st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0]))


@settings(max_examples=40, deadline=None)
@given(
    x_i=hnp.arrays("float32", (4, 3), elements=any_floats),
    x_j=hnp.arrays("float32", (4, 3), elements=any_floats),
    y_i=hnp.arrays("float32", (4,), elements=st.sampled_from([0.0, 1.0, np.nan])),
    y_j=hnp.arrays("float32", (4,), elements=st.sampled_from([0.0, 1.0])),
)
def test_pairs_accept_exactly_the_finite_pairs_with_some_differing_label(x_i, x_j, y_i, y_j):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        valid = all(np.all(np.isfinite(a)) for a in (x_i, x_j, y_i)) and np.any(y_i != y_j)
        if not valid:
            with pytest.raises(ValueError, match="NaN or Inf|every pair has equal labels"):
                Pairs(x_i, x_j, y_i, y_j)
            return
        pairs = Pairs(x_i, x_j, y_i, y_j)
    x, y = next(iter(pairs.to_dataset(batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(x["original"], x_i)
    np.testing.assert_array_equal(y["counterfactual"], y_j)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    x_i=hnp.arrays("float32", (4, 4), elements=finite_floats),
    x_j=hnp.arrays("float32", (4, 4), elements=finite_floats),
    same=hnp.arrays("bool", (4,)),
    y_i=hnp.arrays("float32", (4,), elements=st.sampled_from([0.0, 1.0])),
    y_j=hnp.arrays("float32", (4,), elements=st.sampled_from([0.0, 1.0])),
)
def test_a_compiled_gs_step_on_finite_pairs_is_finite_and_counts_every_point(
    gs, x_i, x_j, same, y_i, y_j
):
    x_j = np.where(same[:, None], x_i, x_j)
    model = gs.fresh()
    logs = model.fit(dataset((make_pair(x_i, x_j), make_pair(y_i, y_j))), verbose=0).history
    assert finite(model) and np.isfinite(logs["loss"][0]) and np.isfinite(logs["gs_loss"][0])
    differing = int(np.sum(y_i != y_j))
    # Every point of a pair whose labels differ is either supervised or skipped.
    assert round(logs["gs_supervised"][0] * 8) + logs["gs_skipped"][0] == 2 * differing
    assert logs["gs_skipped"][0] >= 2 * np.sum(same & (y_i != y_j))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    x_i=hnp.arrays("float32", (4, 4), elements=any_floats),
    y_i=hnp.arrays("float32", (4,), elements=st.sampled_from([0.0, 1.0] * 8 + [2.0, -1.0, np.nan])),
)
def test_any_pair_batch_is_an_error_before_the_step_or_trains_to_finite_weights(gs, x_i, y_i):
    model = gs.fresh()
    batch = (make_pair(x_i, x_i[::-1].copy()), make_pair(y_i, 1.0 - y_i))
    guard = TerminateOnNonFinite()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            model.fit(dataset(batch), verbose=0, callbacks=[guard])
        except ValueError as error:
            assert re.search("NaN or Inf|must be in \\[0, 1\\]", str(error)), str(error)
            assert unchanged(model, gs.initial)
            event("rejected by fit")
            return
    assert finite(model)
    assert guard.message is None or unchanged(model, gs.initial)
    event("trained" if guard.message is None else "stopped by the guard")


if __name__ == "__main__":
    sys.stdout.write(render_table() + "\n")
