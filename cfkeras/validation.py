"""Checks of a trainer's data in `fit`: a clear error, never NaN weights.

`fit` of every cfkeras trainer (and of `cfkeras.models.StackedEnsemble`)
passes its training data through `checked_training_data` before Keras builds
the step. What the data's structure shows (an empty dataset, pair dicts with
other keys, ragged pair members, labels with the wrong number of columns) is
a `ValueError` at once. Values are checked batch by batch: arrays whole, on
the host, before training; a `tf.data.Dataset` by a `map` that asserts every
batch in the input pipeline (on the host, never in the compiled step), so
that NaN or Inf values, negative sample weights and labels out of range stop
`fit` with a `ValueError` naming the fix as the batch is read, before the
step that would train on it. The dataset is never read ahead: a peek would
start an extra iteration and shift the order of a dataset reshuffled every
iteration. Generators and `keras.utils.PyDataset`s are not checked; a
non-finite loss from them is caught in training by
`cfkeras.callbacks.TerminateOnNonFinite`.
"""

import keras
import numpy as np
import tensorflow as tf

from cfkeras.pairs import COUNTERFACTUAL, ORIGINAL, check_no_ragged, check_pair_keys, is_pair

# Substring of the names of the losses whose targets are class labels.
_CLASSIFICATION_LOSS = "crossentropy"
# Starts the message of every assertion of a checked dataset; `fit` turns the
# TensorFlow error that carries it into a `ValueError`.
MARK, END = "cfkeras.validation: ", " (end)"

EMPTY_DATASET = (
    "fit: the training dataset is empty (0 batches). Check the `take`, `filter`, `shard` or "
    "`batch(..., drop_remainder=True)` (a batch size larger than the data) that emptied it."
)
NO_BATCH = "fit: the training data yielded no batch; it is empty."


def _values(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _nonfinite_message(what, where):
    return (
        f"fit: the {what} contain NaN or Inf values in {where}. Remove or impute them before "
        "training (cfkeras.pairs.Pairs rejects them when the pairs are built)."
    )


NEGATIVE_WEIGHTS = "fit: the sample weights must be non-negative."


def _loss_name(loss):
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, keras.losses.Loss):
        return f"{type(loss).__name__} {loss.name}".lower()
    return getattr(loss, "__name__", "").lower()


def _label_rule(shape, width, what):
    """`("unit", message)` for targets in [0, 1], `("ids", message)` for class ids.

    Raises:
        ValueError: labels whose number of columns fits neither.
    """
    columns = 1 if len(shape) <= 1 else int(np.prod(shape[1:]))
    if width == 1 or columns == width:
        if columns != width:
            raise ValueError(
                f"fit: the {what} have {columns} columns per example but the model has one "
                "output (binary): pass one 0/1 target per example."
            )
        return "unit", (
            f"fit: the {what} must be in [0, 1] for a model with {width} output(s) (binary or "
            "multi-hot targets). Map them to 0/1 (e.g. `(y + 1) / 2` for -1/1 labels)."
        )
    if columns != 1:
        raise ValueError(
            f"fit: the {what} have {columns} columns per example but the model has {width} "
            f"outputs: pass class ids, shape (batch,), or one-hot rows, shape (batch, {width})."
        )
    return "ids", (
        f"fit: the {what} must be integer class ids in [0, {width}) for a model with {width} "
        f"outputs. Re-index them from 0 (e.g. `y - 1` for labels 1..{width})."
    )


def check_labels(y, width, what="labels"):
    """Checks class labels (an array) against a model with `width` outputs.

    Binary (`width == 1`): targets in [0, 1]. Otherwise class ids
    `(batch,)` / `(batch, 1)`, integers in `[0, width)`, or dense targets
    `(batch, width)` in [0, 1].

    Raises:
        ValueError: naming the shape or the range found and the fix.
    """
    array = _values(y)
    if array.dtype.kind not in "biuf" or array.size == 0:
        return
    rule, message = _label_rule(array.shape, width, what)
    low, high = float(array.min()), float(array.max())
    if rule == "unit":
        bad = low < 0 or high > 1
    else:
        bad = low < 0 or high >= width or not np.all(np.equal(np.floor(array), array))
    if bad:
        raise ValueError(f"{message} They range over [{low:g}, {high:g}].")


def _label_asserts(y, width, what):
    """The assertions of `check_labels` as TensorFlow ops, for a dataset's batches."""
    if not y.dtype.is_integer and not y.dtype.is_floating:
        return []
    rule, message = _label_rule(tuple(y.shape), width, what)
    y = tf.cast(y, "float32")
    if rule == "unit":
        ok = tf.logical_and(tf.reduce_all(y >= 0), tf.reduce_all(y <= 1))
    else:
        ok = tf.reduce_all(
            tf.logical_and(tf.logical_and(y >= 0, y < width), tf.equal(tf.floor(y), y))
        )
    return [tf.debugging.Assert(ok, [MARK + message + END, "labels:", y], summarize=8)]


def _output_width(model):
    for candidate in (getattr(model, "head", None), getattr(model, "model", None), model):
        outputs = getattr(candidate, "outputs", None)
        if outputs:
            return outputs[0].shape[-1]
    return None


def _members(x, y):
    """`[(inputs, labels, " (member) member" or "")]` of a batch, paired or not."""
    if is_pair(x):
        labels = lambda key: y[key] if is_pair(y) else y  # noqa: E731
        return [(x[key], labels(key), f" ({key} member)") for key in (ORIGINAL, COUNTERFACTUAL)]
    return [(x, y, "")]


def _check_structure(x, y):
    check_pair_keys(x, "inputs")
    check_pair_keys(y, "labels")
    if is_pair(x):
        check_no_ragged(x, "inputs")


def _is_classification(model, classification):
    if classification is None:
        return _CLASSIFICATION_LOSS in _loss_name(getattr(model, "loss", None))
    return classification


def _check_arrays(model, x, y, sample_weight, classification):
    leaves = keras.tree.flatten(x)
    if any(len(t) == 0 for t in leaves):
        raise ValueError("fit: the training data is empty (0 examples).")
    _check_structure(x, y)
    if sample_weight is not None:
        for w in keras.tree.flatten(sample_weight):
            if np.issubdtype(_values(w).dtype, np.floating) and not np.all(np.isfinite(w)):
                raise ValueError(_nonfinite_message("sample weights", "the data"))
            if np.any(_values(w) < 0):
                raise ValueError(NEGATIVE_WEIGHTS)
    width = _output_width(model)
    for inputs, labels, member in _members(x, y):
        for what, value in (("inputs", inputs), ("labels", labels)):
            for leaf in [] if value is None else keras.tree.flatten(value):
                array = _values(leaf)
                if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                    bad = int(np.sum(~np.isfinite(array)))
                    raise ValueError(
                        _nonfinite_message(what + member, "the data").replace(
                            "contain NaN", f"contain {bad} NaN"
                        )
                    )
        if labels is not None and classification and width is not None and not is_pair(labels):
            check_labels(labels, width, "labels" + member)


def _checked_dataset(model, dataset, classification):
    if int(dataset.cardinality()) == 0:
        raise ValueError(EMPTY_DATASET)
    width = _output_width(model)

    def check(*element):
        batch = element[0] if len(element) == 1 else element
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        _check_structure(x, y)  # static: raised when the map is traced
        asserts = []

        def finite(value, what):
            for leaf in keras.tree.flatten(value):
                if isinstance(leaf, tf.Tensor) and leaf.dtype.is_floating:
                    message = MARK + _nonfinite_message(what, "a batch") + END
                    asserts.append(tf.debugging.assert_all_finite(leaf, message))

        if sample_weight is not None:
            finite(sample_weight, "sample weights")
            for w in keras.tree.flatten(sample_weight):
                ok = tf.reduce_all(tf.cast(w, "float32") >= 0)
                asserts.append(tf.debugging.Assert(ok, [MARK + NEGATIVE_WEIGHTS + END]))
        for inputs, labels, member in _members(x, y):
            finite(inputs, "inputs" + member)
            if labels is None or isinstance(labels, tf.RaggedTensor):
                continue
            finite(labels, "labels" + member)
            if classification and width is not None and isinstance(labels, tf.Tensor):
                asserts.extend(_label_asserts(labels, width, "labels" + member))
        with tf.control_dependencies(asserts):
            checked = keras.tree.map_structure(
                lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t, element
            )
        return checked if len(element) > 1 else checked[0]

    return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def checked_training_data(model, x, y=None, sample_weight=None, classification=None):
    """`fit`'s `x`, checked (see the module): a dataset comes back with the checks mapped.

    Args:
        model: the compiled trainer.
        x, y, sample_weight: `fit`'s arguments.
        classification: whether the labels are class labels; None: when the
            compiled loss is a cross-entropy.

    Raises:
        ValueError: naming the problem and the fix (structure, and array values).
    """
    classification = _is_classification(model, classification)
    if isinstance(x, tf.data.Dataset):
        return _checked_dataset(model, x, classification)
    leaves = keras.tree.flatten(x) if x is not None else []
    if leaves and all(isinstance(t, (np.ndarray, tf.Tensor)) for t in leaves):
        _check_arrays(model, x, y, sample_weight, classification)
    return x


def fit_checked(fit, model, x, y, args, kwargs, classification=None):
    """Runs `fit(x, y, *args, **kwargs)` on checked data (see the module).

    A failed assertion of a checked dataset becomes a `ValueError` with its
    message; data that yields no batch is a `ValueError` too.
    """
    x = checked_training_data(model, x, y, kwargs.get("sample_weight"), classification)
    try:
        history = fit(x, y, *args, **kwargs)
    except tf.errors.InvalidArgumentError as error:
        if MARK not in error.message:
            raise
        raise ValueError(error.message.split(MARK, 1)[1].split(END, 1)[0]) from None
    epochs = kwargs.get("epochs", args[1] if len(args) > 1 else 1)
    if not history.history and epochs > kwargs.get("initial_epoch", 0):
        raise ValueError(NO_BATCH)
    return history
