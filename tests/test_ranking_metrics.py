"""Exact average precision and ROC AUC against scikit-learn, streamed in
batches, under `fit`/`evaluate` with XLA, past capacity, and serialized."""

import json

import keras
import numpy as np
import pytest

import cfkeras
from cfkeras.metrics import ROCAUC, AveragePrecision, average_precision, label_metrics, roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _numpy_ap(y, s):
    """Average precision by its definition: the precision at each distinct
    threshold, weighted by the recall gained there."""
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(s), reverse=True):
        predicted = s >= threshold
        recall = (predicted & (y == 1)).sum() / (y == 1).sum()
        precision = (predicted & (y == 1)).sum() / predicted.sum()
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return ap


def _data(n=60, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.3).astype("float32")
    y[0] = 1  # every label has a positive
    s = np.round(rng.random((n, labels)) + 0.5 * y, 1).astype("float32")  # many ties
    return y, s


def test_functions_match_numpy_and_sklearn_with_ties_and_weights():
    y, s = _data()
    w = np.random.default_rng(1).random(len(y)).astype("float32")
    ap, auc, ap_w, auc_w = (
        average_precision(y, s).numpy(),
        roc_auc(y, s).numpy(),
        average_precision(y, s, w).numpy(),
        roc_auc(y, s, w).numpy(),
    )
    for k in range(y.shape[1]):
        assert ap[k] == pytest.approx(_numpy_ap(y[:, k], s[:, k]), rel=1e-5)
        assert ap[k] == pytest.approx(
            sklearn_metrics.average_precision_score(y[:, k], s[:, k]), rel=1e-5
        )
        assert auc[k] == pytest.approx(sklearn_metrics.roc_auc_score(y[:, k], s[:, k]), rel=1e-5)
        expected = sklearn_metrics.average_precision_score(y[:, k], s[:, k], sample_weight=w)
        assert ap_w[k] == pytest.approx(expected, rel=1e-5)
        expected = sklearn_metrics.roc_auc_score(y[:, k], s[:, k], sample_weight=w)
        assert auc_w[k] == pytest.approx(expected, rel=1e-5)
    # Hand-computed: scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = (1 + 2/3) / 2, AUC = 3/4.
    assert float(average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])[0]) == pytest.approx(5 / 6)
    assert float(roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])[0]) == pytest.approx(0.75)
    # Undefined: no positive.
    assert np.isnan(average_precision([0, 0], [0.3, 0.2])[0])
    assert np.isnan(roc_auc([1, 1], [0.3, 0.2])[0])


def test_streamed_metrics_equal_the_whole_set_and_nan_past_capacity():
    y, s = _data()
    mean_ap, label_ap, label_auc = AveragePrecision(5), AveragePrecision(5, label=2), ROCAUC(5, 3)
    for start in range(0, 60, 16):
        for metric in (mean_ap, label_ap, label_auc):
            metric.update_state(y[start : start + 16], s[start : start + 16])
    reference = [sklearn_metrics.average_precision_score(y[:, k], s[:, k]) for k in range(5)]
    assert float(mean_ap.result()) == pytest.approx(np.mean(reference), rel=1e-5)
    assert float(label_ap.result()) == pytest.approx(reference[2], rel=1e-5)
    expected = sklearn_metrics.roc_auc_score(y[:, 3], s[:, 3])
    assert float(label_auc.result()) == pytest.approx(expected, rel=1e-5)
    mean_ap.reset_state()
    mean_ap.update_state(y[:10], s[:10])
    expected = np.nanmean(
        [_numpy_ap(y[:10, k], s[:10, k]) if y[:10, k].any() else np.nan for k in range(5)]
    )
    assert float(mean_ap.result()) == pytest.approx(expected, rel=1e-5)
    small = AveragePrecision(5, capacity=50)
    small.update_state(y[:40], s[:40])
    small.update_state(y[40:], s[40:])  # does not fit
    assert np.isnan(float(small.result()))


def test_metrics_under_fit_and_evaluate_with_xla():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, :3] + 0.5 * rng.normal(size=(64, 3)) > 0).astype("float32")
    model = cfkeras.models.multi_label_classifier(3, feature_dim=6, hidden_units=(8,))
    model.compile(
        optimizer="adam",
        loss="binary_crossentropy",
        metrics=label_metrics(3, names=["a", "b", "c"], capacity=128),
        jit_compile=True,
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    scores = model.predict(x, verbose=0)
    reference = [sklearn_metrics.average_precision_score(y[:, k], scores[:, k]) for k in range(3)]
    assert logs["mean_average_precision"] == pytest.approx(np.mean(reference), rel=1e-4)
    assert logs["ap_b"] == pytest.approx(reference[1], rel=1e-4)
    expected = sklearn_metrics.roc_auc_score(y[:, 2], scores[:, 2])
    assert logs["auc_c"] == pytest.approx(expected, rel=1e-4)


def test_config_round_trip_and_bad_arguments():
    for metric in (AveragePrecision(4, label=1, capacity=10), ROCAUC(4, capacity=10, name="m")):
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(metric)))
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(metric) and clone.get_config() == metric.get_config()
    with pytest.raises(ValueError, match="label must be in"):
        AveragePrecision(3, label=3)
    with pytest.raises(ValueError, match="capacity"):
        ROCAUC(3, capacity=0)
    with pytest.raises(ValueError, match="2 names for 3 labels"):
        label_metrics(3, names=["a", "b"])
