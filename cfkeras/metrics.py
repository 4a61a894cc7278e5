"""Metrics: pair accuracy and flip rate, and exact multi-label ranking metrics.

Ranking metrics (`AveragePrecision`, `ROCAUC`, `label_metrics`): exact
average precision (mAP as in the paper's Table 2 and Pascal VOC's
non-interpolated definition, the value of scikit-learn's
`average_precision_score`) and exact ROC AUC, per label or averaged, from
every score of an epoch held in a fixed-size buffer. `keras.metrics.AUC`
(`curve="PR"` or `"ROC"`) interpolates over thresholds instead: use it only
beside these.

Pair decisions are read from the pre-activation logits, so they do not depend on
whether the model applies its sigmoid/softmax itself:

* `"binary"`: one logit, positive when `logit > 0` (probability > 0.5);
* `"multiclass"`: the arg-max class;
* `"multilabel"`: every label with `logit > 0`.
"""

import keras
import tensorflow as tf
from keras import ops

TASKS = ("binary", "multiclass", "multilabel")


def predicted_labels(logits, task):
    """Decisions from logits: int32 `(batch,)` or `(batch, labels)`."""
    if task == "multiclass":
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.cast(logits > 0, "int32")


def true_labels(y, task):
    """Targets in the form of `predicted_labels`.

    Sparse class ids and one-hot (or soft) targets are both accepted for
    `"multiclass"`; binary and multi-label targets are thresholded at 0.5.
    """
    y = ops.convert_to_tensor(y)
    if task == "multiclass":
        if len(y.shape) == 1 or y.shape[-1] == 1:
            return ops.cast(ops.reshape(y, (-1,)), "int32")
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    y = ops.cast(y, "float32")
    if len(y.shape) == 1:
        y = ops.expand_dims(y, -1)
    return ops.cast(y > 0.5, "int32")


def _all_equal(a, b):
    equal = ops.equal(a, b)
    if len(equal.shape) > 1:
        equal = ops.all(equal, axis=-1)
    return equal


def pair_outcomes(logits, logits_counterfactual, y, y_counterfactual, task):
    """Per-pair booleans `(both_correct, flipped)`.

    Args:
        logits: logits of the originals, `(pairs, width)`.
        logits_counterfactual: logits of their counterfactuals.
        y: labels of the originals (sparse or dense).
        y_counterfactual: labels of the counterfactuals.
        task: one of `"binary"`, `"multiclass"`, `"multilabel"`.

    Returns:
        `both_correct`: both members predicted right (every label right for
        multi-label); `flipped`: the decision differs between the members.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; received {task!r}.")
    pred = predicted_labels(logits, task)
    pred_cf = predicted_labels(logits_counterfactual, task)
    correct = _all_equal(pred, true_labels(y, task))
    correct_cf = _all_equal(pred_cf, true_labels(y_counterfactual, task))
    both_correct = ops.logical_and(correct, correct_cf)
    flipped = ops.logical_not(_all_equal(pred, pred_cf))
    return both_correct, flipped


# === Exact ranking metrics (multi-label) ===


def _ranked(y_true, y_score, sample_weight=None):
    """Per label (rows of the results), the weighted cumulative positives and
    negatives at the end of each example's group of tied scores, in order of
    decreasing score."""
    y_score = tf.transpose(tf.cast(y_score, "float32"))  # (labels, n)
    y_true = tf.transpose(tf.cast(y_true, "float32"))
    weight = tf.ones_like(y_score[:1]) if sample_weight is None else sample_weight
    weight = tf.broadcast_to(tf.reshape(tf.cast(weight, "float32"), (1, -1)), tf.shape(y_score))
    order = tf.argsort(y_score, axis=-1, direction="DESCENDING", stable=True)
    score = tf.gather(y_score, order, batch_dims=1)
    positive = tf.gather(y_true * weight, order, batch_dims=1)
    negative = tf.gather((1.0 - y_true) * weight, order, batch_dims=1)
    tp, fp = tf.cumsum(positive, axis=-1), tf.cumsum(negative, axis=-1)
    # Groups of tied scores (O(n), XLA-friendly segment reductions; a
    # search-sorted would build n x n comparisons under XLA). The cumulative
    # counts are non-decreasing: a group's max is its value at the group's
    # end, the min of the counts before each example its value before the group.
    labels, n = tf.shape(score)[0], tf.shape(score)[1]
    start = tf.concat(
        [tf.ones_like(score[:, :1]), tf.cast(score[:, 1:] != score[:, :-1], score.dtype)], -1
    )
    group = tf.cast(tf.cumsum(start, axis=-1), "int32") - 1 + n * tf.range(labels)[:, None]
    segments = labels * n
    per_group = lambda reduce, c: tf.gather(  # noqa: E731
        reduce(tf.reshape(c, (-1,)), tf.reshape(group, (-1,)), segments), group
    )
    tp_end = per_group(tf.math.unsorted_segment_max, tp)
    fp_end = per_group(tf.math.unsorted_segment_max, fp)
    fp_before = per_group(tf.math.unsorted_segment_min, fp - negative)
    return positive, tp_end, fp_end, fp_before, tp[:, -1], fp[:, -1]


def average_precision(y_true, y_score, sample_weight=None):
    """Exact average precision of every label: `(labels,)` float32.

    Formula (the step-wise area under the precision-recall curve, no
    interpolation, as scikit-learn's `average_precision_score`):

    ```
    AP = sum_k (R_k - R_{k-1}) P_k
    ```

    over the distinct scores in decreasing order, `P_k` and `R_k` the
    precision and recall of predicting positive every example scored at or
    above the k-th. Tied scores form one step. NaN for a label without a
    positive example.

    Args:
        y_true: `(n, labels)` 0/1 targets (or `(n,)`: one label).
        y_score: `(n, labels)` scores, any monotone scale (logits or
            probabilities).
        sample_weight: optional `(n,)` non-negative weights.

    Example:

    >>> y = [[1], [0], [1], [0]]
    >>> s = [[0.9], [0.8], [0.7], [0.1]]
    >>> round(float(cfkeras.metrics.average_precision(y, s)[0]), 4)  # (1 + 2/3) / 2
    0.8333
    """
    y_true, y_score = _as_columns(y_true), _as_columns(y_score)
    positive, tp_end, fp_end, _, total_positive, _ = _ranked(y_true, y_score, sample_weight)
    precision = tf.math.divide_no_nan(tp_end, tp_end + fp_end)
    ap = tf.reduce_sum(positive * precision, axis=-1) / total_positive
    return tf.where(total_positive > 0, ap, float("nan"))


def roc_auc(y_true, y_score, sample_weight=None):
    """Exact area under the ROC curve of every label: `(labels,)` float32.

    Formula (Mann-Whitney; ties count one half):

    ```
    AUC = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)
    ```

    NaN for a label without a positive or without a negative example.
    Arguments as `average_precision`.
    """
    y_true, y_score = _as_columns(y_true), _as_columns(y_score)
    positive, _, fp_end, fp_before, total_positive, total_negative = _ranked(
        y_true, y_score, sample_weight
    )
    below = total_negative[:, None] - fp_end
    tied = fp_end - fp_before
    auc = tf.reduce_sum(positive * (below + 0.5 * tied), axis=-1) / (
        total_positive * total_negative
    )
    return tf.where((total_positive > 0) & (total_negative > 0), auc, float("nan"))


def _as_columns(value):
    value = tf.convert_to_tensor(value)
    return value[:, None] if value.shape.rank == 1 else value


class _RankingMetric(keras.metrics.Metric):
    """Holds every `(target, score, weight)` of an epoch in a buffer of
    `capacity` rows (XLA-compatible: fixed shapes), then ranks them."""

    def __init__(self, num_labels, label=None, capacity=50000, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1; received {num_labels}.")
        if label is not None and not 0 <= label < num_labels:
            raise ValueError(f"label must be in [0, {num_labels}); received {label}.")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; received {capacity}.")
        self.num_labels = int(num_labels)
        self.label = None if label is None else int(label)
        self.capacity = int(capacity)
        width = 1 if self.label is not None else self.num_labels
        self.scores = self.add_variable((self.capacity, width), "zeros", name="scores")
        self.targets = self.add_variable((self.capacity, width), "zeros", name="targets")
        self.weights_ = self.add_variable((self.capacity,), "zeros", name="weights")
        self.count = self.add_variable((), "zeros", dtype="int32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1, self.num_labels))
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1, self.num_labels))
        if self.label is not None:
            y_true = y_true[:, self.label : self.label + 1]
            y_pred = y_pred[:, self.label : self.label + 1]
        n = ops.shape(y_true)[0]
        weight = ops.ones((n,), "float32")
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,)) * weight
        start = ops.cast(self.count, "int32")
        # Write only when the batch fits; otherwise the count passes the
        # capacity and `result()` is NaN (no silent truncation).
        fits = start + n <= self.capacity
        safe = ops.minimum(start, ops.maximum(self.capacity - n, 0))
        for variable, update, index in (
            (self.scores, y_pred, [safe, 0]),
            (self.targets, y_true, [safe, 0]),
            (self.weights_, weight, [safe]),
        ):
            written = ops.slice_update(variable, index, ops.cast(update, variable.dtype))
            variable.assign(ops.where(fits, written, variable))
        self.count.assign(start + ops.cast(n, "int32"))

    def _score(self, y_true, y_score, weight):
        raise NotImplementedError

    def result(self):
        values = self._score(self.targets, self.scores, self.weights_)
        if self.label is not None:
            value = values[0]
        else:
            # The mean over labels that have a defined value.
            defined = tf.logical_not(tf.math.is_nan(values))
            value = tf.reduce_sum(tf.where(defined, values, 0.0)) / tf.reduce_sum(
                tf.cast(defined, "float32")
            )
        return tf.where(self.count <= self.capacity, value, float("nan"))

    def reset_state(self):
        for variable in (self.scores, self.targets, self.weights_, self.count):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"num_labels": self.num_labels, "label": self.label})
        config["capacity"] = self.capacity
        return config


@keras.saving.register_keras_serializable(package="cfkeras")
class AveragePrecision(_RankingMetric):
    """Exact average precision of one label, or its mean over labels (mAP).

    Streams like any Keras metric (under `fit` and XLA too) by holding every
    score of the epoch in a buffer of `capacity` rows, then computes the
    exact value of `cfkeras.metrics.average_precision` (scikit-learn's
    `average_precision_score`), not the interpolated area of
    `keras.metrics.AUC(curve="PR")`. Past `capacity` rows the result is NaN.
    The mean (mAP) is over the labels that have a positive example.

    Args:
        num_labels: the width of the targets.
        label: the index of the label to score; None (default) for mAP.
        capacity: the most examples an epoch (or evaluation) may hold
            (memory: `2 x capacity x labels` floats). Keras reads `result()`
            after every training step, which sorts the whole buffer: size it
            to the evaluation set, or keep the metric for `evaluate` and
            validation.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="sigmoid")])
    >>> model.compile("adam", "binary_crossentropy",
    ...               metrics=[cfkeras.metrics.AveragePrecision(3, name="mAP")])
    """

    def __init__(self, num_labels, label=None, capacity=50000, name=None, dtype=None):
        name = name or ("mean_average_precision" if label is None else f"ap_{label}")
        super().__init__(num_labels, label, capacity, name=name, dtype=dtype)

    def _score(self, y_true, y_score, weight):
        return average_precision(y_true, y_score, weight)


@keras.saving.register_keras_serializable(package="cfkeras")
class ROCAUC(_RankingMetric):
    """Exact area under the ROC curve of one label, or its mean over labels.

    As `AveragePrecision` (a buffer of `capacity` rows, NaN past it), with
    the value of `cfkeras.metrics.roc_auc` (scikit-learn's
    `roc_auc_score`). For one metric per label, see `label_metrics`.
    """

    def __init__(self, num_labels, label=None, capacity=50000, name=None, dtype=None):
        name = name or ("mean_roc_auc" if label is None else f"auc_{label}")
        super().__init__(num_labels, label, capacity, name=name, dtype=dtype)

    def _score(self, y_true, y_score, weight):
        return roc_auc(y_true, y_score, weight)


def label_metrics(num_labels, names=None, capacity=50000):
    """The metrics multi-label users expect: mAP, and per label AP and ROC AUC.

    Returns `[AveragePrecision(mAP), AveragePrecision(label=k) ...,
    ROCAUC(label=k) ...]`, named `mean_average_precision`, `ap_<name>`,
    `auc_<name>` (`names` default: the label indices).
    """
    names = [str(k) for k in range(num_labels)] if names is None else [str(n) for n in names]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} names for {num_labels} labels.")
    return (
        [AveragePrecision(num_labels, capacity=capacity)]
        + [
            AveragePrecision(num_labels, k, capacity, name=f"ap_{names[k]}")
            for k in range(num_labels)
        ]
        + [ROCAUC(num_labels, k, capacity, name=f"auc_{names[k]}") for k in range(num_labels)]
    )
