"""What every cfkeras trainer shares: the step plumbing around its own losses.

A cfkeras trainer is a `keras.Model` that wraps the user's model, keeps
Keras's `compile`/`fit`/`evaluate`/`save`/`export` contract, and trains on
batches of pairs (see `cfkeras.pairs`) or on ordinary unpaired batches. This
module holds what does not depend on the method:

* `minimize`: Keras's order inside a step (`optimizer.scale_loss` for mixed
  precision, gradients, `optimizer.apply`) with embedding gradients applied
  dense;
* `PairTrainer`, the base class: dispatch of paired and unpaired batches to
  the subclass's loss routines, the same trackers in `train_step` and
  `test_step`, `jit_compile="auto"` meaning XLA unless distributed, compiled
  metrics built from one member of a pair, and `export` whose `serve` takes
  single inputs.
"""

import keras
import tensorflow as tf
from keras import ops

from cfkeras import _keras_private, validation
from cfkeras.models import graph
from cfkeras.pairs import ORIGINAL, check_pair_keys, is_pair


def densify(gradient):
    """A dense gradient: sparse (`IndexedSlices`) embedding gradients make XLA
    recompile the step on every call with some optimizers (Adadelta)."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def minimize(optimizer, tape, objective, variables):
    """One update of `variables` on `objective`, in Keras's train_step order.

    `objective` must have been computed (and passed through `scale`, for
    loss scaling under mixed precision) inside `tape`; its gradients are made
    dense and applied.
    """
    gradients = tape.gradient(objective, variables)
    optimizer.apply([densify(g) for g in gradients], variables)


def scale(optimizer, objective):
    """`optimizer.scale_loss(objective)` (mixed precision); call it inside the tape."""
    return optimizer.scale_loss(objective) if optimizer is not None else objective


def global_sum(value):
    """The sum of `value` over the replicas in sync (itself without distribution)."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return value


class PairTrainer(keras.Model):
    """Base class of cfkeras's trainers: the plumbing of their steps.

    A subclass implements

    * `compute_pair_losses(x, y, sample_weight, training)` for a batch of
      pairs and `compute_unpaired_losses(x, y, sample_weight, training)` for
      an ordinary batch, each returning `(objective, stats)`;
    * `pair_trackers()` and `update_pair_trackers(stats)`: the metrics that
      exist only for pairs.

    `stats` holds `loss` and `main_loss` (scaled per replica as Keras scales
    its losses) and `x`, `y`, `y_pred` and `sample_weight` for the compiled
    metrics.

    The default `train_step` minimises the objective with the compiled
    optimizer; `test_step` computes the same stats and updates the same
    trackers, so every `val_*` figure is real.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.main_loss_tracker = keras.metrics.Mean(name="main_loss")

    # === To implement ===

    def compute_pair_losses(self, x, y, sample_weight=None, training=False):
        raise NotImplementedError

    def compute_unpaired_losses(self, x, y, sample_weight=None, training=False):
        raise NotImplementedError

    def pair_trackers(self):
        """The trackers that exist only for batches of pairs."""
        return []

    def update_pair_trackers(self, stats):
        """Updates `pair_trackers()` from the stats of a batch of pairs."""

    # === Steps ===

    def compute_step_losses(self, x, y, sample_weight=None, training=False):
        """`(objective, stats)` of a batch, paired or not."""
        check_pair_keys(x, "inputs")
        check_pair_keys(y, "labels")
        if is_pair(x) or is_pair(y):
            return self.compute_pair_losses(x, y, sample_weight, training=training)
        return self.compute_unpaired_losses(x, y, sample_weight, training=training)

    def update_trackers(self, stats, paired):
        """Updates the loss, pair and compiled trackers; returns the logs.

        Unpaired batches leave the pair trackers alone and out of the logs.
        """
        unscale = _keras_private.unscale_loss_for_distribution
        batch = ops.shape(stats["y_pred"])[0]
        _keras_private.loss_tracker(self).update_state(unscale(stats["loss"]), sample_weight=batch)
        self.main_loss_tracker.update_state(unscale(stats["main_loss"]), sample_weight=batch)
        if paired:
            self.update_pair_trackers(stats)
        logs = self.compute_metrics(
            stats["x"], stats["y"], stats["y_pred"], sample_weight=stats["sample_weight"]
        )
        if not paired:
            names = {tracker.name for tracker in self.pair_trackers()}
            logs = {key: value for key, value in logs.items() if key not in names}
        return logs

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            objective, stats = self.compute_step_losses(x, y, sample_weight, training=True)
            objective = scale(self.optimizer, objective)
        minimize(self.optimizer, tape, objective, self.trainable_weights)
        return self.update_trackers(stats, paired=is_pair(x))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, stats = self.compute_step_losses(x, y, sample_weight, training=False)
        return self.update_trackers(stats, paired=is_pair(x))

    # === Keras plumbing ===

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit` on data checked by `cfkeras.validation`: bad data is a
        `ValueError` naming the fix, raised before a step trains on it."""
        return validation.fit_checked(
            super().fit, self, x, y, args, kwargs, classification=self.classification_labels
        )

    # Whether the labels are class labels (checked by `fit`); None: when the
    # compiled loss is a cross-entropy.
    classification_labels = None

    def _resolve_auto_jit_compile(self):
        # Keras resolves `jit_compile="auto"` to False on CPU, where XLA was
        # measured 1.6-2.8x faster for the GS step: use XLA unless a
        # distribution strategy is active (XLA with MirroredStrategy on
        # logical devices fails in TensorFlow itself).
        if tf.distribute.has_strategy() or _keras_private.distribute_strategy(self) is not None:
            return False
        return _keras_private.model_supports_jit(self)

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the compiled loss and metrics from one batch's (x, y):
        # give it one member of the pair, which is what `call` and the losses see.
        if data_batch is not None:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data_batch)
            if is_pair(x):
                y = y[ORIGINAL] if is_pair(y) else y
                data_batch = (x[ORIGINAL], y, sample_weight)
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def serving_model(self):
        """The model whose symbolic inputs `export` serves (override)."""
        return None

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs
    ):
        """`keras.Model.export` whose `serve` takes single (unpaired) inputs."""
        inputs = graph.symbolic_input(self.serving_model())
        if input_signature is None and inputs is not None:
            input_signature = [
                keras.tree.map_structure(
                    lambda t: tf.TensorSpec(t.shape, t.dtype, name=t.name), inputs
                )
            ]
        return super().export(
            filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
        )
