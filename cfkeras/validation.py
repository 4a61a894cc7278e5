"""Checks of a trainer's data before its first step: a clear error, never NaN weights.

`fit` of every cfkeras trainer (and of `cfkeras.models.StackedEnsemble`)
calls `check_training_data` on the training data before Keras builds the
step: an empty dataset, NaN or Inf values, negative sample weights, ragged
pair members and labels that do not fit the model's output (wrong arity,
out of range) raise a `ValueError` naming the problem and the fix. A
`tf.data.Dataset` is checked on its first batch (the data of the first step;
reading it costs one batch of the input pipeline); arrays are checked whole.
Generators and `keras.utils.PyDataset`s are not read ahead: a later bad
batch is caught in training by `cfkeras.callbacks.TerminateOnNonFinite`.
"""

import keras
import numpy as np
import tensorflow as tf

from cfkeras.pairs import COUNTERFACTUAL, ORIGINAL, check_no_ragged, check_pair_keys, is_pair

# Substring of the names of the losses whose targets are class labels.
_CLASSIFICATION_LOSS = "crossentropy"


def first_batch(x, y=None, sample_weight=None):
    """The first training batch `(x, y, sample_weight)` of `fit`'s data, or None.

    None for data that cannot be read ahead (generators, `PyDataset`).

    Raises:
        ValueError: the data is empty.
    """
    if isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == 0:
            raise ValueError(
                "fit: the training dataset is empty (0 batches). Check the `take`, `filter`, "
                "`shard` or `batch(..., drop_remainder=True)` (a batch size larger than the "
                "data) that emptied it."
            )
        batch = next(iter(x.take(1)), None)
        if batch is None:
            raise ValueError("fit: the training dataset yielded no batch; it is empty.")
        return keras.utils.unpack_x_y_sample_weight(batch)
    leaves = keras.tree.flatten(x) if x is not None else []
    if not leaves or not all(isinstance(t, (np.ndarray, tf.Tensor)) for t in leaves):
        return None
    if any(len(t) == 0 for t in leaves):
        raise ValueError("fit: the training data is empty (0 examples).")
    return x, y, sample_weight


def _values(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _check_finite(value, what, where):
    for leaf in keras.tree.flatten(value):
        array = _values(leaf)
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            bad = int(np.sum(~np.isfinite(array)))
            raise ValueError(
                f"fit: the {what} contain {bad} NaN or Inf value(s) in {where}. "
                "Remove or impute them before training (cfkeras.pairs.Pairs rejects them "
                "when the pairs are built)."
            )


def _loss_name(loss):
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, keras.losses.Loss):
        return f"{type(loss).__name__} {loss.name}".lower()
    return getattr(loss, "__name__", "").lower()


def check_labels(y, width, what="labels"):
    """Checks class labels against a model with `width` outputs.

    Binary (`width == 1`): targets in [0, 1]. Otherwise class ids
    `(batch,)` / `(batch, 1)`, integers in `[0, width)`, or dense targets
    `(batch, width)` in [0, 1].

    Raises:
        ValueError: naming the shape or the range found and the fix.
    """
    array = _values(y)
    if array.dtype.kind not in "biuf" or array.size == 0:
        return
    columns = 1 if array.ndim == 1 else int(np.prod(array.shape[1:]))
    low, high = float(array.min()), float(array.max())
    if width == 1 or columns == width:
        if columns != width:
            raise ValueError(
                f"fit: the {what} have {columns} columns per example but the model has one "
                "output (binary): pass one 0/1 target per example."
            )
        if low < 0 or high > 1:
            raise ValueError(
                f"fit: the {what} must be in [0, 1] for a model with {width} output(s) "
                f"(binary or multi-hot targets); they range over [{low:g}, {high:g}]. "
                "Map them to 0/1 (e.g. `(y + 1) / 2` for -1/1 labels)."
            )
        return
    if columns != 1:
        raise ValueError(
            f"fit: the {what} have {columns} columns per example but the model has {width} "
            f"outputs: pass class ids, shape (batch,), or one-hot rows, shape (batch, {width})."
        )
    if low < 0 or high >= width or not np.all(np.equal(np.floor(array), array)):
        raise ValueError(
            f"fit: the {what} must be integer class ids in [0, {width}) for a model with "
            f"{width} outputs; they range over [{low:g}, {high:g}]. Re-index them from 0 "
            f"(e.g. `y - 1` for labels 1..{width})."
        )


def _output_width(model):
    for candidate in (getattr(model, "head", None), getattr(model, "model", None), model):
        outputs = getattr(candidate, "outputs", None)
        if outputs:
            return outputs[0].shape[-1]
    return None


def check_training_data(model, x, y=None, sample_weight=None, classification=None):
    """Checks the first batch of `fit`'s data against `model` (see the module).

    Args:
        model: the compiled trainer.
        x, y, sample_weight: `fit`'s arguments.
        classification: whether the labels are class labels; None: when the
            compiled loss is a cross-entropy.

    Raises:
        ValueError: naming the problem and the fix.
    """
    batch = first_batch(x, y, sample_weight)
    if batch is None:
        return
    where = "the first batch" if isinstance(x, tf.data.Dataset) else "the data"
    x, y, sample_weight = batch
    check_pair_keys(x, "inputs")
    check_pair_keys(y, "labels")
    if is_pair(x):
        check_no_ragged(x, "inputs")
        members = [(x[key], y[key] if is_pair(y) else y, key) for key in (ORIGINAL, COUNTERFACTUAL)]
    else:
        members = [(x, y, None)]
    if sample_weight is not None:
        _check_finite(sample_weight, "sample weights", where)
        if any(np.any(_values(w) < 0) for w in keras.tree.flatten(sample_weight)):
            raise ValueError("fit: the sample weights must be non-negative.")
    if classification is None:
        classification = _CLASSIFICATION_LOSS in _loss_name(getattr(model, "loss", None))
    width = _output_width(model)
    for inputs, labels, member in members:
        member_name = "" if member is None else f" ({member} member)"
        _check_finite(inputs, "inputs" + member_name, where)
        if labels is None:
            continue
        _check_finite(labels, "labels" + member_name, where)
        if classification and width is not None and not isinstance(labels, tf.RaggedTensor):
            check_labels(labels, width, "labels" + member_name)
