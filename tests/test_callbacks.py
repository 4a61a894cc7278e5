"""Tests for `cfkeras.callbacks`: the exact TensorBoard tags of a GS run, and the
alignment histogram against `compute_pair_losses`."""

import doctest
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import cfkeras
from cfkeras import callbacks as cf_callbacks
from cfkeras.callbacks import PairAlignmentHistogram

GS_KEYS = (
    "loss",
    "main_loss",
    "gs_loss",
    "gs_cosine",
    "gs_supervised",
    "gs_skipped",
    "pair_accuracy",
    "flip_rate",
    "accuracy",
)
# What `keras.callbacks.TensorBoard` adds by itself (keras/src/callbacks/tensorboard.py):
# the learning rate in train/, and after each validation pass the validation logs
# against `optimizer.iterations` in validation/.
TRAIN_SCALARS = {f"epoch_{key}" for key in GS_KEYS} | {"epoch_learning_rate"}
VALIDATION_SCALARS = (
    {f"epoch_{key}" for key in GS_KEYS}
    | {f"evaluation_{key}_vs_iterations" for key in GS_KEYS}
    | {"gs_cosine_alignment_positive_fraction"}
)
HISTOGRAM = "gs_cosine_alignment"

NUM_PAIRS, EQUAL_LABELS, IDENTICAL = 12, (1, 5, 9), 3
# Both ends of every pair whose labels differ and whose inputs differ.
NUM_SUPERVISED = 2 * (NUM_PAIRS - len(EQUAL_LABELS) - 1)


def _pairs(n, seed, equal=(), identical=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    x_cf = (x + rng.normal(size=(n, 4))).astype("float32")
    y = (np.arange(n) % 2).astype("float32")
    y_cf = 1.0 - y
    y_cf[list(equal)] = y[list(equal)]
    if identical is not None:
        x_cf[identical] = x[identical]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equal-label pairs are intended here
        return cfkeras.pairs.Pairs(x, x_cf, y, y_cf)


def _gs_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    gs = cfkeras.GradientSupervisionModel(keras.Model(inputs, outputs), gs_layer="hidden")
    gs.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return gs


def _validation():
    return _pairs(NUM_PAIRS, 1, EQUAL_LABELS, IDENTICAL).to_dataset(
        batch_size=NUM_PAIRS, shuffle=False
    )


def read_events(directory):
    """`{tag: {step: (plugin, value)}}` of every summary in the event files of `directory`."""
    events = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                events.setdefault(value.tag, {})[event.step] = (
                    plugin,
                    tf.make_ndarray(value.tensor),
                )
    return events


def tags(events, plugin):
    return {tag for tag, steps in events.items() if {p for p, _ in steps.values()} == {plugin}}


def tensorboard_buckets(values, bucket_count=30):
    """NumPy copy of the bucketing of `tf.summary.histogram` (tensorboard summary_v2)."""
    values = np.asarray(values, np.float64)
    low, high = values.min(), values.max()
    width = (high - low) / bucket_count
    index = np.minimum(np.floor((values - low) / width).astype(int), bucket_count - 1)
    counts = np.bincount(index, minlength=bucket_count).astype(np.float64)
    edges = low + width * np.arange(bucket_count + 1)
    edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch GS run logged by TensorBoard and PairAlignmentHistogram."""
    log_dir = tmp_path_factory.mktemp("logs")
    gs = _gs_model()
    validation = _validation()
    train = _pairs(32, 0).to_dataset(batch_size=8, seed=0)
    history = gs.fit(
        train,
        epochs=2,
        validation_data=validation,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir),
            PairAlignmentHistogram(log_dir, validation),
        ],
    )
    return gs, history, log_dir, validation


def test_tensorboard_writes_every_step_key_and_the_histogram(run):
    _, history, log_dir, _ = run
    assert sorted(history.history) == sorted(GS_KEYS + tuple(f"val_{k}" for k in GS_KEYS))
    assert sorted(p.name for p in log_dir.iterdir()) == ["train", "validation"]

    train = read_events(log_dir / "train")
    assert set(train) == TRAIN_SCALARS
    assert tags(train, "scalars") == TRAIN_SCALARS
    for tag in TRAIN_SCALARS:
        assert set(train[tag]) == {0, 1}, tag

    validation = read_events(log_dir / "validation")
    assert set(validation) == VALIDATION_SCALARS | {HISTOGRAM}
    assert tags(validation, "scalars") == VALIDATION_SCALARS
    assert tags(validation, "histograms") == {HISTOGRAM}
    assert set(validation[HISTOGRAM]) == {0, 1}
    # `evaluation_*_vs_iterations` is written at `optimizer.iterations`: 4 steps an epoch.
    assert set(validation["evaluation_loss_vs_iterations"]) == {4, 8}
    for key in GS_KEYS:
        np.testing.assert_allclose(
            validation[f"epoch_{key}"][1][1],
            history.history[f"val_{key}"][1],
            rtol=1e-6,
        )


def test_histogram_holds_the_supervised_cosines_of_compute_pair_losses(run):
    gs, _, log_dir, validation = run
    x, y = next(iter(validation))
    # The weights after the last epoch are those the callback saw at its end.
    _, stats = gs.compute_pair_losses(x, y, training=False)
    supervised = keras.ops.convert_to_numpy(stats["gs_supervised"]) > 0
    cosines = keras.ops.convert_to_numpy(stats["gs_cosine_per_point"])[supervised]
    assert supervised.sum() == NUM_SUPERVISED
    assert not supervised[[IDENTICAL, IDENTICAL + NUM_PAIRS]].any()
    assert not supervised[list(EQUAL_LABELS)].any()
    # The per-point cosines average to the `gs_cosine` statistic.
    np.testing.assert_allclose(cosines.mean(), float(stats["gs_cosine"][0]), rtol=1e-6)

    events = read_events(log_dir / "validation")
    for step in (0, 1):
        buckets = events[HISTOGRAM][step][1]
        assert buckets.shape == (30, 3)
        assert buckets[:, 2].sum() == NUM_SUPERVISED
    np.testing.assert_allclose(events[HISTOGRAM][1][1], tensorboard_buckets(cosines), rtol=1e-6)
    np.testing.assert_allclose(
        events[f"{HISTOGRAM}_positive_fraction"][1][1], np.mean(cosines > 0), rtol=1e-6
    )


def test_freq_and_batch_level_tensorboard(tmp_path):
    # update_freq=3 makes TensorBoard install a `record_if` that is false at the
    # end of these epochs (4 steps each); the histogram must still be written.
    gs = _gs_model()
    validation = _validation()
    gs.fit(
        _pairs(32, 0).to_dataset(batch_size=8, seed=0),
        epochs=3,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path, update_freq=3),
            PairAlignmentHistogram(tmp_path, validation, freq=2, subdir="alignment", tag="cos"),
        ],
    )
    events = read_events(tmp_path / "alignment")
    assert set(events) == {"cos", "cos_positive_fraction"}
    assert set(events["cos"]) == {0, 2}


def test_accepts_a_batch_tuple_and_checks_its_arguments(tmp_path):
    x, y = next(iter(_validation()))
    callback = PairAlignmentHistogram(tmp_path, (x, y))
    callback.set_model(_gs_model())
    assert callback.alignment().shape == (NUM_SUPERVISED,)

    with pytest.raises(ValueError, match="paired inputs and labels"):
        PairAlignmentHistogram(tmp_path, (x["original"], y["original"]))
    with pytest.raises(ValueError, match="freq"):
        PairAlignmentHistogram(tmp_path, (x, y), freq=0)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="GradientSupervisionModel"):
        plain.fit(
            np.zeros((4, 4)),
            np.zeros(4),
            verbose=0,
            callbacks=[PairAlignmentHistogram(tmp_path, (x, y))],
        )


def test_docstring_example_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    results = doctest.testmod(cf_callbacks, extraglobs={"cfkeras": cfkeras}, verbose=False)
    assert results.attempted >= 10 and results.failed == 0
