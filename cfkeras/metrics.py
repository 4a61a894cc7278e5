"""Pair metrics beyond the paper: pair accuracy and flip rate.

Decisions are read from the pre-activation logits, so they do not depend on
whether the model applies its sigmoid/softmax itself:

* `"binary"`: one logit, positive when `logit > 0` (probability > 0.5);
* `"multiclass"`: the arg-max class;
* `"multilabel"`: every label with `logit > 0`.
"""

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
