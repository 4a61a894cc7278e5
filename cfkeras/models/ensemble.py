"""Stacked ensembles: N independently initialised copies of a model as one Keras model."""

import copy

import keras
import tensorflow as tf
from keras import ops

from cfkeras import _keras_private, validation
from cfkeras.models.graph import (
    ENSEMBLE_OUTPUT,
    GS_SPACE,
    MEMBER_LOGITS,
    OUTPUT_ACTIVATIONS,
    activate,
    output_layer,
    split_at_layer,
    symbolic_input,
)
from cfkeras.models.trainer import (
    load_random_states,
    minimize,
    reducible_logs,
    save_random_states,
    scale,
)
from cfkeras.pairs import flatten_pair_batch, is_pair

ACTIVATIONS = ("auto", "sigmoid", "softmax", "linear")
# The public names of the ensemble's layers (defined in cfkeras.models.graph).
__all__ = ["GS_SPACE", "MEMBER_LOGITS", "ENSEMBLE_OUTPUT", "StackedEnsemble", "stacked_ensemble"]


# === Layers ===


@keras.saving.register_keras_serializable(package="cfkeras")
class StackMembers(keras.layers.Layer):
    """Stacks a list of same-shaped tensors along a new member axis 1.

    `(batch, ...)` x N -> `(batch, N, ...)`.
    """

    def call(self, inputs):
        return ops.stack(inputs, axis=1)


@keras.saving.register_keras_serializable(package="cfkeras")
class UnstackMembers(keras.layers.Layer):
    """Splits `(batch, N, ...)` into a list of N tensors `(batch, ...)`.

    Args:
        num_members: `N`.
    """

    def __init__(self, num_members, **kwargs):
        super().__init__(**kwargs)
        self.num_members = int(num_members)

    def call(self, inputs):
        return [inputs[:, i] for i in range(self.num_members)]

    def get_config(self):
        config = super().get_config()
        config.update({"num_members": self.num_members})
        return config


@keras.saving.register_keras_serializable(package="cfkeras")
class MeanOverMembers(keras.layers.Layer):
    """Averages over the member axis 1: `(batch, N, ...)` -> `(batch, ...)`."""

    def call(self, inputs):
        return ops.mean(inputs, axis=1)


# === Model ===


@keras.saving.register_keras_serializable(package="cfkeras")
class StackedEnsemble(keras.Model):
    """N copies of a model stacked as one functional model; averages their logits.

    Every member sees the same inputs. The ensemble's output is the output
    activation applied to the *mean of the members' logits*:

    ```
    f_k(x)  logits of member k (its output layer without its activation)
    p(x)  = activation( (1/N) sum_k f_k(x) )       e.g. sigmoid(mean logit)
    ```

    as in Teney et al. (ECCV 2020, supplement C), who average the logits of
    6 models (not their probabilities). The members' output layers are rewired
    to output logits (their sigmoid/softmax moves to the ensemble's
    `"ensemble_output"` layer), so `GradientSupervisionModel` finds the
    ensemble's logits as it does a single model's.

    Training with `compile`/`fit` on the ensemble itself trains every member
    on its *own* loss: `compute_loss` is the sum over members of the compiled
    loss of each member's prediction (plus regularisation losses, once):

    ```
    L = sum_k L_compiled(y, activation(f_k(x)))
    ```

    The sum, not the mean, so that each member receives exactly the gradient
    it would get if trained alone (members share no weights): one `fit`
    trains N independent models in parallel, for any optimizer (a mean would
    divide every gradient by N, which is not neutral for SGD or Adadelta).
    It is *not* the loss of the averaged output, which would train the N
    members as one wider model. The logged `loss` is this sum; `member_{k}_loss`
    and, for sigmoid/softmax members, `member_{k}_accuracy` are logged per
    member (`val_member_{k}_accuracy` in validation), and the compiled metrics
    are computed on the ensemble's output. This costs a second forward pass.
    Embedding gradients are applied dense (as in `GradientSupervisionModel`):
    sparse ones make XLA recompile the step on every call with Adadelta.

    Gradient supervision: with `gs_layer`, each member is split at its layer
    `gs_layer` and the members' outputs of it are stacked into one layer,
    `"ensemble_gs_space"`, of shape `(batch, N, ...)`, from which member k's
    head reads slice k. Wrapped as `GradientSupervisionModel(ensemble,
    gs_layer="ensemble_gs_space")`, every member is trained exactly as if
    alone, in one step: GS finds the stacked member logits
    (`"ensemble_member_logits"`, its `members_layer`) and sums each member's
    own main loss and `gs_weight` times its own GS loss, one cosine per
    member slice of the stacked space (tested against members trained one
    by one). Metrics and predictions use the ensemble's output.

    Args:
        members: a list of functional or Sequential models with one output,
            the same inputs and no shared weights (e.g. from
            `stacked_ensemble`). They are rewired in place to output logits.
        gs_layer: optional name of a layer of every member whose output is
            the member's GS space (its outputs must have the same shape in
            every member).
        activation: `"auto"`: take the members' output activation
            (sigmoid/softmax) and strip it from them; anything else means
            the members already output logits and `activation` ("sigmoid",
            "softmax" or "linear") is applied to their mean.
        **kwargs: `keras.Model` arguments (`name`).

    Example:

    >>> import numpy as np
    >>> build = lambda seed: cfkeras.models.bag_of_embeddings_classifier(100)
    >>> ensemble = cfkeras.models.stacked_ensemble(build, 3, gs_layer="mean_embedding")
    >>> ensemble.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    >>> x, y = np.random.randint(1, 100, (16, 8)), np.random.randint(0, 2, 16)
    >>> history = ensemble.fit(x, y, epochs=1, verbose=0)
    >>> ensemble.member_logits(x).shape
    TensorShape([16, 3, 1])
    """

    def __init__(self, members, gs_layer=None, activation="auto", **kwargs):
        members = list(members)
        if not members:
            raise ValueError("StackedEnsemble needs at least one member.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; received {activation!r}.")
        _check_independent_members(members)
        activation = _strip_output_activations(members, activation)
        members = [_renamed(member, f"member_{k}") for k, member in enumerate(members)]

        inputs = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name),
            _model_input(members[0]),
        )
        if gs_layer is None:
            logits = [member(inputs) for member in members]
        else:
            parts = [split_at_layer(member, gs_layer) for member in members]
            spaces = [encoder(inputs) for encoder, _ in parts]
            shapes = {tuple(space.shape[1:]) for space in spaces}
            if len(shapes) != 1:
                raise ValueError(
                    f"gs_layer={gs_layer!r} outputs differently shaped tensors in the "
                    f"members ({sorted(shapes)}); they must have one shape to be stacked."
                )
            space = StackMembers(name=GS_SPACE)(spaces)
            member_spaces = UnstackMembers(len(members), name="ensemble_member_spaces")(space)
            logits = [head(h) for (_, head), h in zip(parts, member_spaces)]
        member_logits = StackMembers(name=MEMBER_LOGITS)(logits)
        mean_logits = MeanOverMembers(name="ensemble_logits")(member_logits)
        outputs = keras.layers.Activation(activation, name=ENSEMBLE_OUTPUT)(mean_logits)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.members = members
        self.gs_layer = gs_layer
        self.output_activation = activation
        self.member_loss_trackers = [
            keras.metrics.Mean(name=f"member_{k}_loss") for k in range(len(members))
        ]
        self.member_accuracy_trackers = []
        if activation in OUTPUT_ACTIVATIONS:
            self.member_accuracy_trackers = [
                keras.metrics.Mean(name=f"member_{k}_accuracy") for k in range(len(members))
            ]

    @property
    def num_members(self):
        return len(self.members)

    # === Members ===

    def member_logits(self, x, training=False):
        """The members' logits, `(batch, N, ...)`; their mean is the ensemble's logit."""
        return ops.stack([member(x, training=training) for member in self.members], axis=1)

    def member_predictions(self, x, training=False):
        """Each member's own prediction (its logits through the output activation),
        `(batch, N, ...)`."""
        return activate(self.member_logits(x, training=training), self.output_activation)

    def evaluate_members(self, data):
        """Accuracy of every member and of the ensemble, on a dataset.

        Args:
            data: an iterable of `(x, y)` or `(x, y, sample_weight)` batches
                (e.g. a `tf.data.Dataset`); pairs as in `cfkeras.pairs`
                count both members of every pair.

        Returns:
            A dict of floats: `member_{k}_accuracy` for each member and
            `ensemble_accuracy`.
        """
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                "evaluate_members needs sigmoid or softmax members (accuracy); this "
                f"ensemble's activation is {self.output_activation!r}."
            )
        correct = [0.0] * (self.num_members + 1)
        total = 0.0
        for batch in data:
            x, y, weight = keras.utils.unpack_x_y_sample_weight(batch)
            x, y, weight = flatten_pair_batch(x, y, weight)
            logits = self.member_logits(x)
            n = ops.shape(logits)[0]
            weight = (
                ops.ones((n,)) if weight is None else ops.cast(ops.reshape(weight, (n,)), "float32")
            )
            predictions = [logits[:, k] for k in range(self.num_members)]
            predictions.append(ops.mean(logits, axis=1))
            for k, member_logits in enumerate(predictions):
                hits = self._accuracy(y, activate(member_logits, self.output_activation))
                correct[k] += float(ops.sum(hits * weight))
            total += float(ops.sum(weight))
        if total == 0:
            raise ValueError("evaluate_members: the data holds no (weighted) example.")
        results = {f"member_{k}_accuracy": correct[k] / total for k in range(self.num_members)}
        results["ensemble_accuracy"] = correct[-1] / total
        return results

    def _accuracy(self, y, prediction):
        """Per-example accuracy, `(batch,)`, as Keras's "accuracy" resolves it
        (the mean over labels for multi-label sigmoid outputs)."""
        y = ops.convert_to_tensor(y)
        if self.output_activation == "sigmoid":
            hits = keras.metrics.binary_accuracy(y, prediction)
        elif (
            len(y.shape) == len(prediction.shape)
            and y.shape[-1] == prediction.shape[-1]
            and prediction.shape[-1] > 1
        ):
            hits = keras.metrics.categorical_accuracy(y, prediction)
        else:
            hits = keras.metrics.sparse_categorical_accuracy(y, prediction)
        hits = ops.cast(hits, "float32")
        return ops.mean(ops.reshape(hits, (ops.shape(hits)[0], -1)), axis=1)

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum over members of each member's compiled loss (see the class)."""
        compiled_loss = _keras_private.compiled_loss(self)
        if compiled_loss is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)

        logits = self.member_logits(x, training=training)
        batch = ops.shape(logits)[0]
        total = 0.0
        for k in range(self.num_members):
            prediction = activate(logits[:, k], self.output_activation)
            loss = compiled_loss(y, prediction, sample_weight)
            total = total + loss
            self.member_loss_trackers[k].update_state(
                _keras_private.unscale_loss_for_distribution(loss), sample_weight=batch
            )
            if self.member_accuracy_trackers:
                self.member_accuracy_trackers[k].update_state(
                    self._accuracy(y, prediction), sample_weight=sample_weight
                )
        for loss in self.losses:
            total = total + _keras_private.aggregate_additional_loss(self, loss)
        return total

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit` on data checked by `cfkeras.validation`."""
        return validation.fit_checked(super().fit, self, x, y, args, kwargs)

    def train_step(self, data):
        # Keras's TensorFlow train_step, in its order, with the embedding
        # gradients applied dense (cfkeras.models.trainer.minimize).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _check_unpaired(x, y)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = _keras_private.compute_loss(self, x, y, y_pred, sample_weight, training=True)
            _keras_private.loss_tracker(self).update_state(
                _keras_private.unscale_loss_for_distribution(loss),
                sample_weight=ops.shape(keras.tree.flatten(x)[0])[0],
            )
            scaled = scale(self.optimizer, loss)
        minimize(self.optimizer, tape, scaled, self.trainable_weights)
        return reducible_logs(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    def test_step(self, data):
        _check_unpaired(*keras.utils.unpack_x_y_sample_weight(data)[:2])
        return reducible_logs(super().test_step(data))

    def save_own_variables(self, store):
        # With the members' random states (dropout), as cfkeras's trainers.
        super().save_own_variables(store)
        save_random_states(self, store)

    def load_own_variables(self, store):
        super().load_own_variables(load_random_states(self, store))

    # === Config ===

    def get_config(self):
        # The constructor's arguments, not the functional graph they build
        # (for a subclass, Functional.get_config gives the base Model config).
        config = super().get_config()
        config.update(
            {
                "members": [keras.saving.serialize_keras_object(m) for m in self.members],
                "gs_layer": self.gs_layer,
                "activation": self.output_activation,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        # Copies: Keras's functional deserialization empties the dicts it reads.
        config["members"] = [
            keras.saving.deserialize_keras_object(copy.deepcopy(m), custom_objects=custom_objects)
            for m in config["members"]
        ]
        return cls(**config)


def stacked_ensemble(build_fn, members, gs_layer=None, seed=0, name="stacked_ensemble"):
    """Builds `members` copies of a model with `build_fn` and stacks them.

    Args:
        build_fn: `build_fn(seed)` returns a new functional or Sequential
            model; member k is built with seed `seed + k`. Use it to seed the
            initialisers; if `build_fn` ignores it, members still differ
            (Keras draws each initialisation from its global generator).
        members: number of members, N.
        gs_layer: see `StackedEnsemble`.
        seed: seed of the first member.
        name: the ensemble's name.

    Returns:
        A `StackedEnsemble`.

    Example:

    >>> build = lambda seed: cfkeras.models.bag_of_embeddings_classifier(20000)
    >>> ensemble = cfkeras.models.stacked_ensemble(build, 6, gs_layer="mean_embedding")
    >>> gs = cfkeras.GradientSupervisionModel(ensemble, gs_layer="ensemble_gs_space")
    """
    if members < 1:
        raise ValueError(f"members must be >= 1; received {members}.")
    return StackedEnsemble(
        [build_fn(seed + k) for k in range(members)], gs_layer=gs_layer, name=name
    )


# === Helpers ===


def _check_unpaired(x, y):
    if is_pair(x) or is_pair(y):
        raise ValueError(
            "StackedEnsemble.fit and evaluate take ordinary batches `(x, y)`; received pairs. "
            "For gradient supervision wrap the ensemble: `GradientSupervisionModel(ensemble, "
            "gs_layer='ensemble_gs_space')`; for the augmentation baseline train on "
            "`pairs.flatten()`."
        )


def _model_input(model):
    model_input = symbolic_input(model)
    if model_input is None:
        raise ValueError(
            f"StackedEnsemble members must be functional or Sequential models; received {model!r}."
        )
    return model_input


def _require_output_layer(model):
    layer = output_layer(model)
    if layer is None:
        raise ValueError(f"StackedEnsemble members must be functional models; received {model!r}.")
    return layer


def _strip_output_activations(members, activation):
    """Rewires the members to output logits; returns the ensemble's activation."""
    layers = [_require_output_layer(member) for member in members]
    names = [getattr(getattr(layer, "activation", None), "__name__", None) for layer in layers]
    found = [name if name in OUTPUT_ACTIVATIONS else "linear" for name in names]
    if activation != "auto":
        if any(name in OUTPUT_ACTIVATIONS for name in names):
            raise ValueError(
                f"activation={activation!r} means the members output logits, but their "
                f"output activations are {names}; pass activation='auto' to move them "
                "to the ensemble."
            )
        return activation
    if len(set(found)) != 1:
        raise ValueError(
            f"The members' output activations differ ({found}); they must be the same."
        )
    for layer in layers:
        if found[0] in OUTPUT_ACTIVATIONS:
            layer.activation = keras.activations.linear
    return found[0]


def _renamed(model, name):
    """The same graph (shared layers) as a functional model called `name`."""
    _require_output_layer(model)
    return keras.Model(_model_input(model), model.outputs[0], name=name)


def _check_independent_members(members):
    specs = [
        [(tuple(t.shape[1:]), t.dtype) for t in keras.tree.flatten(_model_input(m))]
        for m in members
    ]
    for k, spec in enumerate(specs[1:], start=1):
        if spec != specs[0]:
            raise ValueError(
                f"The members must take the same inputs; member 0 takes {specs[0]}, "
                f"member {k} takes {spec}."
            )
    seen = {}
    for k, member in enumerate(members):
        for variable in member.weights:
            if id(variable) in seen and seen[id(variable)] != k:
                raise ValueError(
                    f"Members {seen[id(variable)]} and {k} share the weight {variable.path!r}; "
                    "build every member anew (e.g. with `stacked_ensemble`)."
                )
            seen[id(variable)] = k
