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
  single inputs;
* `save_random_states` / `load_random_states`: the seed generators'
  states (dropout) saved with the weights, which Keras leaves out;
* `reducible_logs`: step logs in a form Keras can reduce across workers
  (`MultiWorkerMirroredStrategy`), for every trainer's steps.
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


def reducible_logs(logs):
    """A step's logs in the form Keras can reduce under the current strategy.

    Under `MultiWorkerMirroredStrategy` with several workers Keras reduces
    every output of a step with `strategy.reduce("MEAN", value, axis=0)`,
    which fails on the scalar logs of any `train_step`
    (tensorflow/tensorflow#72388): they are returned with shape `(1,)`, and
    the reduction gives back scalars (the same on every replica: the
    trackers are already global).
    """
    if not _keras_private.reduces_logs_across_workers(tf.distribute.get_strategy()):
        return logs
    return {key: ops.reshape(value, (-1,)) for key, value in logs.items()}


RANDOM_STATE = "random_state_"


def random_states(model):
    """The states of the seed generators of `model`'s layers (dropout ...), in layer order.

    `model.variables` holds them and `model.weights` does not: Keras's
    weights files and checkpoints leave them out.
    """
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def save_random_states(model, store):
    """Adds the random states of `model` to the `store` of its own variables."""
    for k, state in enumerate(random_states(model)):
        store[f"{RANDOM_STATE}{k}"] = state


def load_random_states(model, store):
    """Restores what `save_random_states` wrote; returns the rest of `store` as a dict.

    A file without random states (written before cfkeras saved them) loads
    as before, leaving them as they are.
    """
    keys = list(store.keys()) if store is not None else []
    saved = sorted((k for k in keys if k.startswith(RANDOM_STATE)), key=lambda k: int(k[13:]))
    if saved:
        states = random_states(model)
        if len(saved) != len(states):
            raise ValueError(
                f"The file holds {len(saved)} random (seed generator) states for "
                f"{model.name!r}, which has {len(states)}: it was saved from another model."
            )
        for state, key in zip(states, saved):
            state.assign(store[key])
    return {k: store[k] for k in keys if not k.startswith(RANDOM_STATE)}


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
        return reducible_logs(self.update_trackers(stats, paired=is_pair(x)))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, stats = self.compute_step_losses(x, y, sample_weight, training=False)
        return reducible_logs(self.update_trackers(stats, paired=is_pair(x)))

    # === Keras plumbing ===

    def save_own_variables(self, store):
        # With the seed generators' states (dropout), so that a run resumed
        # from a checkpoint (BackupAndRestore) draws the masks it would have.
        super().save_own_variables(store)
        save_random_states(self, store)

    def load_own_variables(self, store):
        super().load_own_variables(load_random_states(self, store))

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras averages the replicas' first batch (`strategy.reduce("MEAN")`)
        # only to build the compiled loss and metrics from its shapes; the
        # mean fails for boolean inputs (padding masks). One replica's batch
        # has the same structure and dtypes.
        strategy = _keras_private.distribute_strategy(self)
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                first = lambda v: (  # noqa: E731
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                )
                data_batch = keras.tree.map_structure(first, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

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
