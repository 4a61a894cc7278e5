"""Callbacks that log what Keras's own TensorBoard callback cannot."""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from cfkeras.pairs import is_pair


class PairAlignmentHistogram(keras.callbacks.Callback):
    """Writes a TensorBoard histogram of the per-pair gradient alignment.

    Everything `train_step` and `test_step` of
    `cfkeras.models.GradientSupervisionModel` return (`gs_loss`, `gs_cosine`,
    `gs_supervised`, `pair_accuracy`, ...) is already written by
    `keras.callbacks.TensorBoard` as `epoch_<key>` scalars; what it cannot
    write is their distribution. At the end of every `freq`-th epoch (0-based,
    as `TensorBoard(histogram_freq=...)`) this callback runs the model's
    `compute_pair_losses` in inference mode on one fixed batch of pairs and
    writes, at `step=epoch`, to `log_dir/subdir`:

    * `tag` (default `"gs_cosine_alignment"`): a histogram of
      `cos(g_i, x_j - x_i)` over the supervised points of the batch (both ends
      of a pair with `both_directions=True`; points with equal labels,
      identical inputs or a zero gradient are left out);
    * `tag + "_positive_fraction"`: the fraction of those points with a
      positive cosine (gradient pointing toward the counterfactual).

    Nothing is written for an epoch where no point of the batch is
    supervised. The summaries are written eagerly from the callback, outside
    the (XLA-compiled) training step, where `tf.summary` cannot run.

    With the default `subdir="validation"` and the same `log_dir` as
    `keras.callbacks.TensorBoard`, the histogram appears in TensorBoard's
    `validation` run beside the `epoch_*` validation scalars (in an event
    file of its own).

    Args:
        log_dir: root directory of the TensorBoard logs.
        pairs: the fixed batch of pairs, `(x, y)` or `(x, y, sample_weight)`
            with `x = {"original": x_i, "counterfactual": x_j}` and `y` alike
            (see `cfkeras.pairs`), or a `tf.data.Dataset` of such batches, of
            which the first batch is taken.
        freq: write every `freq` epochs.
        subdir: subdirectory of `log_dir` to write to.
        tag: name of the histogram.

    Example:

    >>> import os, tempfile
    >>> import numpy as np, keras
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    >>> outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    >>> gs = cfkeras.models.GradientSupervisionModel(
    ...     keras.Model(inputs, outputs), gs_layer="hidden")
    >>> gs.compile(optimizer="adam", loss="binary_crossentropy")
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> pairs = cfkeras.pairs.Pairs(x, x + 0.1, np.zeros(16), np.ones(16))
    >>> log_dir = tempfile.mkdtemp()
    >>> callbacks = [
    ...     keras.callbacks.TensorBoard(log_dir),
    ...     cfkeras.callbacks.PairAlignmentHistogram(
    ...         log_dir, pairs.to_dataset(batch_size=16, shuffle=False)),
    ... ]
    >>> history = gs.fit(pairs.to_dataset(batch_size=8), epochs=1, verbose=0,
    ...                  callbacks=callbacks)
    >>> sorted(os.listdir(log_dir))
    ['train', 'validation']
    """

    def __init__(self, log_dir, pairs, freq=1, subdir="validation", tag="gs_cosine_alignment"):
        super().__init__()
        if int(freq) < 1:
            raise ValueError(f"freq must be a positive integer; received {freq!r}.")
        if isinstance(pairs, tf.data.Dataset):
            pairs = next(iter(pairs))
        if not isinstance(pairs, (tuple, list)) or len(pairs) not in (2, 3):
            raise ValueError(
                "pairs must be a batch of pairs `(x, y)` or `(x, y, sample_weight)`, "
                f"or a tf.data.Dataset of them; received {type(pairs).__name__}."
            )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(pairs))
        if not (is_pair(x) and is_pair(y)):
            raise ValueError(
                'pairs must hold paired inputs and labels, x = {"original": x_i, '
                '"counterfactual": x_j} and y alike (see cfkeras.pairs).'
            )
        self.log_dir = str(log_dir)
        self.freq = int(freq)
        self.subdir = subdir
        self.tag = tag
        self._pairs = (x, y, sample_weight)
        self._writer = None

    def alignment(self):
        """Cosines of the supervised points of the batch, as a NumPy array."""
        x, y, sample_weight = self._pairs
        _, stats = self.model.compute_pair_losses(x, y, sample_weight, training=False)
        supervised = keras.ops.convert_to_numpy(stats["gs_supervised"]) > 0
        return keras.ops.convert_to_numpy(stats["gs_cosine_per_point"])[supervised]

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "compute_pair_losses"):
            raise ValueError(
                "PairAlignmentHistogram needs a cfkeras.models.GradientSupervisionModel; "
                f"received {type(self.model).__name__}."
            )

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.freq:
            return
        cosines = self.alignment()
        if cosines.size == 0:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, self.subdir))
        # `record_if(True)`: TensorBoard(update_freq=N) may have set a batch condition.
        with self._writer.as_default(), tf.summary.record_if(True):
            tf.summary.histogram(self.tag, cosines, step=epoch)
            tf.summary.scalar(
                f"{self.tag}_positive_fraction", float(np.mean(cosines > 0)), step=epoch
            )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The loss terms `TerminateOnNonFinite` watches, in the order it names them:
# (log key, what it is). An ensemble's `member_{k}_loss` are watched as well.
LOSS_TERMS = (
    ("main_loss", "the main loss"),
    ("gs_loss", "the gradient-supervision (GS) term"),
    ("crm_loss", "CAT's CRM loss"),
    ("cal_objective_after", "CAT's CAL objective"),
    ("loss", "the total loss"),
)


class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training when a loss term goes NaN or Inf, says which, restores the weights.

    In the spirit of `keras.callbacks.TerminateOnNaN`, for cfkeras's trainers:
    after every batch it reads the loss terms that the step returns
    (`main_loss`, GS's `gs_loss`, CAT's `crm_loss` and `cal_objective_after`,
    an ensemble's `member_{k}_loss`, and the total `loss`). The step's
    trackers are running means, so one non-finite batch makes its term
    non-finite in the logs of that very batch. The check runs in the
    callback, on the host: the compiled (XLA) step only returns the metrics.

    On a non-finite term it stops training, restores the weights of the model
    and of its optimizer(s) (`optimizer`, CAT's `crm_optimizer`) to their
    values at the start of the epoch (`restore_weights=True`), and warns with
    a message naming the term(s), the epoch and the batch, also kept in
    `message` (None while training is sound) and `terms`.

    Args:
        restore_weights: restore the weights of the start of the epoch (they
            are copied to the host at every epoch start).

    Example:

    >>> import numpy as np, keras
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    >>> outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    >>> gs = cfkeras.models.GradientSupervisionModel(keras.Model(inputs, outputs), "hidden")
    >>> gs.compile(optimizer="sgd", loss="binary_crossentropy")
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> pairs = cfkeras.pairs.Pairs(x, x + 0.1, np.zeros(16), np.ones(16))
    >>> guard = cfkeras.callbacks.TerminateOnNonFinite()
    >>> history = gs.fit(pairs.to_dataset(batch_size=8), epochs=1, verbose=0,
    ...                  callbacks=[guard])
    >>> guard.message is None
    True
    """

    def __init__(self, restore_weights=True):
        super().__init__()
        self.restore_weights = bool(restore_weights)
        self.message = None
        self.terms = ()
        self._epoch = 0
        self._snapshot = None

    def _optimizers(self):
        found = []
        for name in ("optimizer", "crm_optimizer"):
            optimizer = getattr(self.model, name, None)
            if optimizer is not None and optimizer not in found:
                found.append(optimizer)
        return found

    def _variables(self):
        variables = list(self.model.weights)
        for optimizer in self._optimizers():
            variables.extend(optimizer.variables)
        return variables

    def on_train_begin(self, logs=None):
        self.message = None
        self.terms = ()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.restore_weights:
            self._snapshot = [(v, np.array(v.numpy())) for v in self._variables()]

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        keys = [key for key, _ in LOSS_TERMS]
        keys[-1:-1] = sorted(k for k in logs if k.startswith("member_") and k.endswith("_loss"))
        terms = tuple(
            key
            for key in keys
            if key in logs and not np.all(np.isfinite(np.asarray(logs[key], dtype="float64")))
        )
        if not terms:
            return
        names = dict(LOSS_TERMS)
        described = ", ".join(f"`{key}` ({names.get(key, 'a member loss')})" for key in terms)
        restored = ""
        if self.restore_weights and self._snapshot is not None:
            for variable, value in self._snapshot:
                variable.assign(value)
            restored = (
                f" The weights (and optimizer state) are restored to the start of epoch "
                f"{self._epoch + 1}."
            )
        self.terms = terms
        self.message = (
            f"TerminateOnNonFinite: epoch {self._epoch + 1}, batch {batch}: non-finite "
            f"{described}; training stopped.{restored} Likely causes: NaN/Inf or out-of-range "
            "values in this batch (cfkeras.pairs.Pairs rejects them when the pairs are built), "
            "a learning rate too large, or a float16 overflow under mixed precision."
        )
        self.model.stop_training = True
        warnings.warn(self.message, RuntimeWarning, stacklevel=2)
