"""The gradient-supervision model (Teney, Abbasnejad & van den Hengel, 2020)."""

import copy

import keras
import tensorflow as tf
from keras import ops

from cfkeras import losses as gs_losses
from cfkeras import metrics as pair_metrics
from cfkeras.pairs import COUNTERFACTUAL, ORIGINAL, is_pair

TASKS = ("auto",) + pair_metrics.TASKS
MULTI_LABEL_MODES = ("sum", "per_label")
_OUTPUT_ACTIVATIONS = ("sigmoid", "softmax")
# The layer of a `cfkeras.models.StackedEnsemble` stacking its members' logits.
MEMBER_LOGITS = "ensemble_member_logits"
_GS_METRICS = (
    "gs_loss",
    "gs_cosine",
    "gs_supervised",
    "gs_skipped",
    "pair_accuracy",
    "flip_rate",
)


def _symbolic_input(model):
    """The input structure of a functional or Sequential model, else None."""
    # A Sequential model has `inputs` but no `input` (AttributeError) in Keras 3.
    if isinstance(model, keras.Sequential) and getattr(model, "inputs", None):
        return model.inputs[0]
    return getattr(model, "input", None) if isinstance(model, keras.Model) else None


def split_at_layer(model, layer_name):
    """Splits a functional model at a layer into `(encoder, head)`.

    `encoder` maps the model's inputs to the layer's output (the GS space),
    `head` maps that output to the model's output. Both share the model's
    layers and weights.

    Raises:
        ValueError: no such layer, a layer used more than once, or a layer
            whose output does not separate the inputs from the output (a skip
            connection around it).
    """
    model_input = _symbolic_input(model)
    if not isinstance(model, keras.Model) or model_input is None:
        raise ValueError(
            "`gs_layer` needs a functional or Sequential model; for a "
            f"subclassed model pass `encoder=` and `head=`. Received {model!r}."
        )
    try:
        layer = model.get_layer(layer_name)
    except ValueError as error:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"gs_layer={layer_name!r}: model {model.name!r} has no such layer; "
            f"its layers are {names}."
        ) from error
    if len(model.outputs) != 1:
        raise ValueError(
            f"GradientSupervisionModel supports models with one output; model "
            f"{model.name!r} has {len(model.outputs)}."
        )
    try:
        space = layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"gs_layer={layer_name!r} is called more than once in the model: "
            "its output is ambiguous. Pass `encoder=` and `head=` instead."
        ) from error
    if not isinstance(space, keras.KerasTensor):
        raise ValueError(
            f"gs_layer={layer_name!r} must output a single tensor; it outputs {space!r}."
        )
    encoder = keras.Model(model_input, space, name=f"{model.name}_encoder")
    try:
        head = keras.Model(space, model.outputs[0], name=f"{model.name}_head")
    except ValueError as error:
        raise ValueError(
            f"gs_layer={layer_name!r} does not separate the inputs of model "
            f"{model.name!r} from its output (the output also depends on the "
            "inputs through another path, e.g. a skip connection or a mask). "
            "Choose another layer or pass `encoder=` and `head=`."
        ) from error
    return encoder, head


def activate(logits, activation):
    """Applies an output activation (`"sigmoid"`, `"softmax"` or None) to logits."""
    if activation == "sigmoid":
        return ops.sigmoid(logits)
    if activation == "softmax":
        return ops.softmax(logits, axis=-1)
    return logits


def _has_layer(model, name):
    return any(layer.name == name for layer in getattr(model, "layers", []))


def _member_head(model, gs_layer, members_layer):
    """Maps the stacked GS space of an ensemble to its stacked member logits."""
    try:
        space = model.get_layer(gs_layer).output
        member_logits = model.get_layer(members_layer).output
    except ValueError as error:
        raise ValueError(f"members_layer={members_layer!r}: {error}") from error
    if len(space.shape) < 3 or len(member_logits.shape) != 3:
        raise ValueError(
            f"members_layer={members_layer!r} must output (batch, members, classes) and "
            f"gs_layer={gs_layer!r} (batch, members, ...); got {member_logits.shape} and "
            f"{space.shape}."
        )
    if space.shape[1] != member_logits.shape[1]:
        raise ValueError(
            f"gs_layer={gs_layer!r} stacks {space.shape[1]} members but "
            f"members_layer={members_layer!r} {member_logits.shape[1]}."
        )
    return keras.Model(space, member_logits, name=f"{model.name}_member_head")


def _output_layer(head):
    """The layer that produces `head`'s output, if it can be found."""
    if isinstance(head, keras.Sequential):
        return _output_layer(head.layers[-1]) if head.layers else None
    if hasattr(head, "outputs") and getattr(head, "outputs", None):
        layer = head.outputs[0]._keras_history.operation
        return layer if layer is not head else None
    if hasattr(head, "activation"):
        return head
    return None


def _couples_batch(layer):
    """Whether a layer normalises over the batch in training mode."""
    return any(
        isinstance(sub, keras.layers.BatchNormalization)
        for sub in layer._flatten_layers(include_self=True)
    )


def _concat(a, b):
    return keras.tree.map_structure(lambda u, v: ops.concatenate([u, v], axis=0), a, b)


def _row_weights(sample_weight):
    """Float32 `(2n,)` weights of the rows `[x_i; x_j]` of a batch of pairs,
    from one weight per pair (both members) or a pair of per-member weights
    `{"original": w_i, "counterfactual": w_j}`."""
    if is_pair(sample_weight):
        w_i, w_j = sample_weight[ORIGINAL], sample_weight[COUNTERFACTUAL]
    else:
        w_i = w_j = sample_weight
    flat = lambda w: ops.cast(ops.reshape(w, (-1,)), "float32")  # noqa: E731
    return ops.concatenate([flat(w_i), flat(w_j)], axis=0)


def _densify(gradient):
    # Sparse (IndexedSlices) embedding gradients make XLA recompile the step on
    # every call with some optimizers (Adadelta): apply dense gradients.
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _global_sum(value):
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return value


@keras.saving.register_keras_serializable(package="cfkeras")
class GradientSupervisionModel(keras.Model):
    """Trains a Keras model with gradient supervision on counterfactual pairs.

    Implements Teney, Abbasnejad & van den Hengel, "Learning What Makes a
    Difference from Counterfactual Examples and Gradient Supervision", ECCV
    2020. For a pair `(x_i, x_j)` with different labels, the input gradient at
    `x_i`, taken in a "GS space" (the inputs or the output of a named layer),
    is trained to point toward `x_j`:

    ```
    L = L_main + gs_weight * mean over supervised points (1 - cos(g_i, x_j - x_i))
    g_i = d/dx [ sum_c w_c f_c(x) ] at x_i,  w = cfkeras.losses.contrast_weights
    ```

    `L_main` is the compiled loss over both members of every pair. The sign
    convention (which logit's gradient, with which sign) is documented in
    `cfkeras.losses.contrast_weights`. With `both_directions=True` every pair
    is supervised from both ends.

    Data: `fit` and `evaluate` take pairs, `({"original": x_i,
    "counterfactual": x_j}, {"original": y_i, "counterfactual": y_j})` with an
    optional sample weight per pair or per member (see `cfkeras.pairs`). They
    also take
    ordinary unpaired data (an out-of-domain test set; the augmentation
    baseline trained through the very same step): then only the main loss
    and the compiled metrics are computed. `predict` on single inputs returns
    the wrapped model's outputs; `call` on single inputs equals the wrapped
    model.

    Embedding gradients are applied dense: sparse (`IndexedSlices`)
    gradients make XLA recompile the step on every call with some optimizers
    (Adadelta), seconds a step.

    Logits: GS needs the pre-activation logits `f`. When the wrapped model ends
    in a layer whose activation is sigmoid or softmax (e.g.
    `Dense(1, activation="sigmoid")`), that layer is applied without its
    activation to get the logits, and the activation is applied for the main
    loss, metrics and predictions. Any other model is taken to output logits
    (compile it with `from_logits=True`).

    Batch-coupled layers: if the head (between the GS space and the output)
    contains batch normalisation, its training-mode output is not per-example,
    so the input gradient is taken with the head in inference mode (moving
    statistics), while the main loss uses training mode.

    Metrics, in training and validation alike: `loss` (total), `main_loss`,
    `gs_loss` (mean `1 - cos` over supervised points, before `gs_weight`),
    `gs_cosine` (mean cosine), `gs_supervised` (fraction of points that are
    supervised), `gs_skipped` (count of points whose labels differ but whose
    inputs are identical in the GS space or whose gradient is zero),
    `pair_accuracy` (both members right), `flip_rate` (the decision changes
    between the members), and the compiled metrics over all members.

    `compile(jit_compile="auto")` (the default) means XLA unless a
    distribution strategy is active; Keras's own "auto" disables XLA on CPU.

    Args:
        model: a functional or Sequential Keras model to train.
        gs_layer: name of the layer of `model` whose output is the GS space;
            `None` for the model's (single, float) input.
        encoder: instead of `model`, a model mapping inputs to the GS space.
        head: with `encoder`, a model mapping the GS space to the output.
        gs_weight: `λ`, the weight of the GS term.
        class_selection: `"changed"` (every class whose label changes) or
            `"ground_truth"` (only classes positive at `x_i`).
        class_weights: optional per-class weights multiplying the selection.
        task: `"auto"`, `"binary"`, `"multiclass"` or `"multilabel"`; "auto"
            reads it from the output activation and width.
        multi_label_mode: `"sum"`: one cosine on the summed contrast (default);
            `"per_label"`: one cosine per changed label, averaged.
        both_directions: supervise `x_j -> x_i` as well as `x_i -> x_j`.
        stop_target_gradient: treat `x_j - x_i` as a constant when it depends
            on trainable layers (default: differentiate the formula as
            written).
        min_relative_distance: pairs closer than this relative to their norms
            in the GS space are not supervised (counted in `gs_skipped`).
        members_layer: for an ensemble of independent members stacked in one
            model (`cfkeras.models.StackedEnsemble`): the name of the layer
            whose output stacks the members' logits, `(batch, members,
            classes)`, with the GS space stacked the same way, `(batch,
            members, ...)`. Every member is then trained exactly as if alone,
            in one step: the objective is the sum over members of each
            member's main loss and `gs_weight` times its own GS loss (one
            cosine per member slice of the GS space), while metrics and
            predictions use the ensemble's output. Logged losses are means
            over members, comparable with a single model's. `"auto"` (the
            default) uses `"ensemble_member_logits"` when `model` has that
            layer and `gs_layer` is set, else none.

    Example:

    >>> import numpy as np, keras
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    >>> outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    >>> gs = cfkeras.models.GradientSupervisionModel(
    ...     keras.Model(inputs, outputs), gs_layer=None, gs_weight=1.0)
    >>> gs.compile(optimizer="adam", loss="binary_crossentropy")
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> pairs = cfkeras.pairs.Pairs(x, x + 0.1, np.zeros(16), np.ones(16))
    >>> history = gs.fit(pairs.to_dataset(batch_size=8), epochs=1, verbose=0)
    """

    def __init__(
        self,
        model=None,
        gs_layer=None,
        encoder=None,
        head=None,
        gs_weight=1.0,
        class_selection="changed",
        class_weights=None,
        task="auto",
        multi_label_mode="sum",
        both_directions=True,
        stop_target_gradient=False,
        min_relative_distance=1e-5,
        members_layer="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        member_head = None
        if members_layer == "auto":
            has_members = (
                model is not None and gs_layer is not None and _has_layer(model, MEMBER_LOGITS)
            )
            members_layer = MEMBER_LOGITS if has_members else None
        if members_layer is not None:
            if model is None or gs_layer is None:
                raise ValueError("`members_layer` needs `model` and `gs_layer`.")
            if multi_label_mode == "per_label":
                raise ValueError("`members_layer` does not support multi_label_mode='per_label'.")
            member_head = _member_head(model, gs_layer, members_layer)
        if model is not None:
            if encoder is not None or head is not None:
                raise ValueError("Pass either `model` or `encoder` and `head`, not both.")
            if gs_layer is None:
                encoder, head = None, model
            else:
                encoder, head = split_at_layer(model, gs_layer)
        elif encoder is None or head is None:
            raise ValueError("Pass `model` (with `gs_layer`), or both `encoder` and `head`.")
        elif gs_layer is not None:
            raise ValueError("`gs_layer` applies to `model`; with `encoder`/`head` omit it.")
        if class_selection not in gs_losses.CLASS_SELECTIONS:
            raise ValueError(
                f"class_selection must be one of {gs_losses.CLASS_SELECTIONS}; "
                f"received {class_selection!r}."
            )
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; received {task!r}.")
        if multi_label_mode not in MULTI_LABEL_MODES:
            raise ValueError(
                f"multi_label_mode must be one of {MULTI_LABEL_MODES}; "
                f"received {multi_label_mode!r}."
            )
        if gs_weight < 0:
            raise ValueError(f"gs_weight must be >= 0; received {gs_weight}.")

        self.model = model
        self.gs_layer = gs_layer
        self.encoder = encoder
        self.head = head
        self.gs_weight = float(gs_weight)
        self.class_selection = class_selection
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.task = task
        self.multi_label_mode = multi_label_mode
        self.both_directions = bool(both_directions)
        self.stop_target_gradient = bool(stop_target_gradient)
        self.min_relative_distance = float(min_relative_distance)
        self.members_layer = members_layer
        self.member_head = member_head
        self._head_couples_batch = _couples_batch(head)

        self.main_loss_tracker = keras.metrics.Mean(name="main_loss")
        self.gs_loss_tracker = keras.metrics.Mean(name="gs_loss")
        self.gs_cosine_tracker = keras.metrics.Mean(name="gs_cosine")
        self.gs_supervised_tracker = keras.metrics.Mean(name="gs_supervised")
        self.gs_skipped_tracker = keras.metrics.Sum(name="gs_skipped")
        self.pair_accuracy_tracker = keras.metrics.Mean(name="pair_accuracy")
        self.flip_rate_tracker = keras.metrics.Mean(name="flip_rate")
        if head.built and (encoder is None or encoder.built):
            self.built = True

    # === Forward ===

    def _encode(self, x, training):
        if self.encoder is None:
            return x
        return self.encoder(x, training=training)

    def _output_activation(self):
        layer = _output_layer(self.head)
        name = getattr(getattr(layer, "activation", None), "__name__", None)
        return (layer, name) if name in _OUTPUT_ACTIVATIONS else (None, None)

    def _logits(self, h, training):
        """Pre-activation logits of the head, and the activation it applies."""
        layer, activation = self._output_activation()
        if layer is None:
            return self.head(h, training=training), None
        saved = layer.activation
        layer.activation = keras.activations.linear
        try:
            logits = self.head(h, training=training)
        finally:
            layer.activation = saved
        return logits, activation

    def _forward(self, h, training):
        """`(logits, activation, member_logits)` at points `h` of the GS space.

        For an ensemble (`members_layer`), `member_logits` stacks the members'
        logits `(batch, members, classes)` and `logits` is their mean, the
        ensemble's logits; otherwise `member_logits` is None.
        """
        if self.member_head is None:
            logits, activation = self._logits(h, training)
            return logits, activation, None
        member_logits = self.member_head(h, training=training)
        return ops.mean(member_logits, axis=1), self._output_activation()[1], member_logits

    def _main_loss(self, x, y, y_pred, member_logits, activation, sample_weight, training):
        """`(objective, reported)` main loss.

        For an ensemble the objective is the sum over members of each
        member's compiled loss (each member gets the gradient it would get
        alone) and the reported value their mean; otherwise both are the
        compiled loss of `y_pred`.
        """
        if member_logits is None:
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
            return loss, loss
        members = member_logits.shape[1]
        predictions = activate(member_logits, activation)
        predictions = ops.reshape(predictions, (-1, member_logits.shape[-1]))
        repeat = lambda t: None if t is None else ops.repeat(t, members, axis=0)
        mean = self._compute_loss(
            x=x,
            y=repeat(y),
            y_pred=predictions,
            sample_weight=repeat(sample_weight),
            training=training,
        )
        # Regularisation losses are in `mean` once, and must stay once.
        extra = [self._aggregate_additional_loss(loss) for loss in self.losses]
        extra = ops.sum(ops.stack(extra)) if extra else ops.zeros((), mean.dtype)
        return members * mean - (members - 1) * ops.cast(extra, mean.dtype), mean

    def _resolve_task(self, activation, width):
        if self.task != "auto":
            return self.task
        if activation == "softmax":
            return "multiclass"
        if width == 1:
            return "binary"
        return "multilabel" if activation == "sigmoid" else "multiclass"

    def call(self, inputs, training=None):
        if is_pair(inputs):
            return {
                key: self.call(inputs[key], training=training) for key in (ORIGINAL, COUNTERFACTUAL)
            }
        return self.head(self._encode(inputs, training), training=training)

    # === Losses ===

    def _gradient_supervision(self, h, y, training):
        """Logits and GS statistics for the 2n rows `[x_i; x_j]` of a batch.

        Returns `(logits, activation, member_logits, cos, valid,
        has_contrast, task)`; `cos` and `valid` are `(2n, units)`, one unit
        per ensemble member (one unit for a single model).
        """
        n = ops.shape(h)[0] // 2
        y_partner = ops.concatenate([y[n:], y[:n]], axis=0)
        per_label = self.multi_label_mode == "per_label"
        with tf.GradientTape(watch_accessed_variables=False, persistent=per_label) as tape:
            tape.watch(h)
            logits, activation, member_logits = self._forward(
                h, training and not self._head_couples_batch
            )
            outputs = logits if member_logits is None else member_logits
            dtype = gs_losses.float_dtype(outputs)
            logits32 = ops.cast(outputs, dtype)
            width = logits.shape[-1]
            weights = ops.cast(
                gs_losses.contrast_weights(
                    y, y_partner, width, self.class_selection, self.class_weights
                ),
                dtype,
            )
            # Every member's contrast; members share no weights, so the
            # gradient of the sum is each member's own gradient, block-wise.
            broadcast = weights if member_logits is None else weights[:, None, :]
            contrast = ops.sum(broadcast * logits32)
        task = self._resolve_task(activation, width)
        h_partner = ops.concatenate([h[n:], h[:n]], axis=0)
        origin, target = h, h_partner
        if self.stop_target_gradient:
            origin, target = ops.stop_gradient(h), ops.stop_gradient(h_partner)
        has_contrast = ops.sum(ops.abs(weights), axis=-1) > 0
        if per_label and task == "multilabel":
            # One input gradient per label (rows are independent), not
            # `tape.batch_jacobian`: differentiating its pfor loop again under
            # XLA makes the inputs compile-time constants, so the train step
            # recompiled on every batch. Costs one backward pass per label.
            ones = ops.ones_like(logits32)
            jacobian = ops.stack(
                [
                    tape.gradient(
                        logits32,
                        h,
                        output_gradients=ones * ops.one_hot(c, width, dtype=dtype),
                    )
                    for c in range(width)
                ],
                axis=1,
            )  # (2n, C, ...)
            rows = ops.shape(jacobian)[0]
            jacobian = ops.reshape(jacobian, (rows * width, -1))
            signs = ops.reshape(ops.sign(weights), (-1, 1))
            repeat = lambda a: ops.repeat(ops.reshape(a, (rows, -1)), width, axis=0)
            cos, valid = gs_losses.cosine_alignment(
                jacobian * signs,
                repeat(origin),
                repeat(target),
                self.min_relative_distance,
            )
            label_weight = ops.reshape(ops.abs(weights), (-1,)) * ops.cast(valid, weights.dtype)
            label_weight = ops.reshape(label_weight, (rows, width))
            total = ops.sum(label_weight, axis=-1)
            valid = total > 0
            cos = ops.sum(label_weight * ops.reshape(cos, (rows, width)), axis=-1)
            cos = cos / ops.where(valid, total, ops.ones_like(total))
            cos, valid = cos[:, None], valid[:, None]
        else:
            gradient = tape.gradient(contrast, h)
            units = 1 if member_logits is None else member_logits.shape[1]
            # One cosine per member slice of the stacked GS space.
            per_unit = lambda a: ops.reshape(a, (ops.shape(a)[0] * units, -1))
            cos, valid = gs_losses.cosine_alignment(
                per_unit(gradient), per_unit(origin), per_unit(target), self.min_relative_distance
            )
            cos, valid = ops.reshape(cos, (-1, units)), ops.reshape(valid, (-1, units))
        if self._head_couples_batch and training:
            logits, activation, member_logits = self._forward(h, training=True)
        return logits, activation, member_logits, cos, valid, has_contrast, task

    def compute_pair_losses(self, x, y, sample_weight=None, training=False):
        """The one loss routine of `train_step` and `test_step`.

        Public so that the loss can be inspected and differentiated outside
        `fit` (tests, benchmarks), with no weight update.

        Args:
            x: a pair of inputs `{"original": x_i, "counterfactual": x_j}`.
            y: a pair of labels, same keys.
            sample_weight: optional weight per pair, or a pair of per-member
                weights `{"original": w_i, "counterfactual": w_j}`; each row
                is weighted by its member's weight in the main loss and in
                its GS term, and pair metrics by the mean of the two.
            training: run the layers in training mode.

        Returns:
            `(total, stats)`: the objective `main + gs_weight * gs` (the
            main loss scaled for distribution as Keras scales its losses, the
            GS term divided by the global number of supervised points; for an
            ensemble, summed over members), and a dict with `loss` (the
            reported total: the mean over members for an ensemble),
            `main_loss`, `gs_loss` (`(mean, count)` on this
            replica), `gs_cosine`, per point of the `2n` rows `[x_i; x_j]`
            `gs_supervised` (1 where supervised) and `gs_cosine_per_point`
            (0 where not), `gs_skipped`, per-pair `pair_accuracy` and
            `flip_rate`, and the flattened `x`,
            `y`, `y_pred` and `sample_weight` of the main loss.
        """
        if not is_pair(y):
            raise ValueError(
                "Paired inputs need paired labels: y must be "
                f"{{'{ORIGINAL}': y_i, '{COUNTERFACTUAL}': y_j}}; received {y!r}."
            )
        x_i, x_j = x[ORIGINAL], x[COUNTERFACTUAL]
        y_i, y_j = y[ORIGINAL], y[COUNTERFACTUAL]
        _check_members(x_i, x_j, "inputs")
        _check_members(y_i, y_j, "labels")
        n = ops.shape(keras.tree.flatten(x_i)[0])[0]
        x_all = _concat(x_i, x_j)
        y_all = ops.concatenate([y_i, y_j], axis=0)
        weight_all = None
        if sample_weight is not None:
            # Each row of [x_i; x_j] is weighted by its member's weight, in
            # the main loss and in its GS term.
            weight_all = _row_weights(sample_weight)
            sample_weight = (weight_all[:n] + weight_all[n:]) / 2.0  # a pair's weight

        h = self._encode(x_all, training)
        if isinstance(h, (list, tuple, dict)):
            raise ValueError(
                "The GS space must be a single tensor; the encoder returns a structure."
            )
        logits, activation, member_logits, cos, valid, has_contrast, task = (
            self._gradient_supervision(h, y_all, training)
        )
        y_pred = activate(logits, activation)
        main_objective, main_loss = self._main_loss(
            x_all, y_all, y_pred, member_logits, activation, weight_all, training
        )

        if self.gs_weight == 0:
            # The GS statistics are still reported, but not differentiated:
            # no second-order backward pass when the term does not count.
            cos = ops.stop_gradient(cos)
        rows, units = ops.shape(cos)[0], cos.shape[1]
        active = ops.ones((rows,), "bool")
        if not self.both_directions:
            active = ops.arange(rows) < n
        if weight_all is not None:
            active = ops.logical_and(active, weight_all > 0)
        labelled = ops.logical_and(has_contrast, active)
        supervised = ops.logical_and(labelled[:, None], valid)  # (rows, units)
        unit_weight = ops.cast(supervised, cos.dtype)
        if weight_all is not None:
            unit_weight = unit_weight * ops.cast(weight_all, cos.dtype)[:, None]
        local_sum = ops.sum(unit_weight * (1.0 - cos))
        local_count = ops.sum(unit_weight)
        global_count = _global_sum(local_count)
        # Normalised by the global count so that summing replicas' gradients
        # gives the global mean; safe when no point is supervised.
        gs_loss = local_sum / ops.where(global_count > 0, global_count, 1.0)
        main_objective = ops.cast(main_objective, gs_loss.dtype)
        # An ensemble's members each add their own GS loss: `units` times the mean.
        total = main_objective + self.gs_weight * units * gs_loss
        reported = ops.cast(main_loss, gs_loss.dtype) + self.gs_weight * gs_loss

        any_valid = ops.any(valid, axis=1)
        valid_units = ops.cast(valid, cos.dtype)
        valid_count = ops.sum(valid_units, axis=1)
        point_cos = ops.sum(valid_units * cos, axis=1) / ops.maximum(valid_count, 1.0)
        safe_count = ops.where(local_count > 0, local_count, 1.0)
        both_correct, flipped = pair_metrics.pair_outcomes(logits[:n], logits[n:], y_i, y_j, task)
        stats = {
            "loss": reported,
            "main_loss": main_loss,
            "gs_loss": (local_sum / safe_count, local_count),
            "gs_cosine": (ops.sum(unit_weight * cos) / safe_count, local_count),
            "gs_supervised": ops.cast(ops.logical_and(labelled, any_valid), "float32"),
            "gs_cosine_per_point": point_cos,
            "gs_skipped": ops.sum(
                ops.cast(ops.logical_and(labelled, ops.logical_not(any_valid)), "float32")
            ),
            "pair_accuracy": ops.cast(both_correct, "float32"),
            "flip_rate": ops.cast(flipped, "float32"),
            "x": x_all,
            "y": y_all,
            "y_pred": y_pred,
            "sample_weight": weight_all,
            "pair_weight": sample_weight,
            "active_weight": ops.cast(active, "float32"),
        }
        return total, stats

    # === Steps ===

    def _update_trackers(self, stats):
        from keras.src.losses.loss import unscale_loss_for_distribution

        batch = ops.shape(stats["y_pred"])[0]
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(stats["loss"]), sample_weight=batch
        )
        self.main_loss_tracker.update_state(
            unscale_loss_for_distribution(stats["main_loss"]), sample_weight=batch
        )
        if "gs_loss" in stats:
            self.gs_loss_tracker.update_state(*stats["gs_loss"])
            self.gs_cosine_tracker.update_state(*stats["gs_cosine"])
            self.gs_supervised_tracker.update_state(
                stats["gs_supervised"], sample_weight=stats["active_weight"]
            )
            self.gs_skipped_tracker.update_state(stats["gs_skipped"])
            self.pair_accuracy_tracker.update_state(
                stats["pair_accuracy"], sample_weight=stats["pair_weight"]
            )
            self.flip_rate_tracker.update_state(
                stats["flip_rate"], sample_weight=stats["pair_weight"]
            )
        logs = self.compute_metrics(
            stats["x"],
            stats["y"],
            stats["y_pred"],
            sample_weight=stats["sample_weight"],
        )
        if "gs_loss" not in stats:
            logs = {key: value for key, value in logs.items() if key not in _GS_METRICS}
        return logs

    def _step_losses(self, x, y, sample_weight, training):
        """Total loss and tracker inputs for paired or unpaired data.

        Unpaired data (an out-of-domain test set, or the augmentation baseline
        trained through the same step) gets the main loss only.
        """
        if is_pair(x):
            return self.compute_pair_losses(x, y, sample_weight, training=training)
        if is_pair(y):
            raise ValueError(
                "Paired labels need paired inputs: x must be "
                f"{{'{ORIGINAL}': x_i, '{COUNTERFACTUAL}': x_j}}; received {x!r}."
            )
        logits, activation, member_logits = self._forward(self._encode(x, training), training)
        y_pred = activate(logits, activation)
        objective, loss = self._main_loss(
            x, y, y_pred, member_logits, activation, sample_weight, training
        )
        stats = {
            "loss": loss,
            "main_loss": loss,
            "x": x,
            "y": y,
            "y_pred": y_pred,
            "sample_weight": sample_weight,
        }
        return objective, stats

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            total, stats = self._step_losses(x, y, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(total) if self.optimizer is not None else total
        variables = self.trainable_weights
        gradients = [_densify(g) for g in tape.gradient(scaled, variables)]
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(stats)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        total, stats = self._step_losses(x, y, sample_weight, training=False)
        return self._update_trackers(stats)

    # === Keras plumbing ===

    def _resolve_auto_jit_compile(self):
        # Keras resolves `jit_compile="auto"` to False on CPU, where XLA was
        # measured 1.6-2.8x faster for the GS step: use XLA unless a
        # distribution strategy is active (XLA with MirroredStrategy on
        # logical devices fails in TensorFlow itself).
        if tf.distribute.has_strategy() or self._distribute_strategy is not None:
            return False
        return keras.src.trainers.trainer.model_supports_jit(self)

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the compiled loss and metrics from one batch's (x, y):
        # give it one member of the pair, which is what `call` and the losses see.
        if data_batch is not None:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data_batch)
            if is_pair(x):
                y = y[ORIGINAL] if is_pair(y) else y
                data_batch = (x[ORIGINAL], y, sample_weight)
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        **kwargs,
    ):
        """`keras.Model.export` whose `serve` takes single (unpaired) inputs."""
        inputs = _symbolic_input(self.model if self.model is not None else self.encoder)
        if input_signature is None and inputs is not None:
            input_signature = [
                keras.tree.map_structure(
                    lambda t: tf.TensorSpec(t.shape, t.dtype, name=t.name),
                    inputs,
                )
            ]
        return super().export(
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )

    # === Config ===

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "model": serialize(self.model) if self.model is not None else None,
                "gs_layer": self.gs_layer,
                "encoder": None if self.model is not None else serialize(self.encoder),
                "head": None if self.model is not None else serialize(self.head),
                "gs_weight": self.gs_weight,
                "class_selection": self.class_selection,
                "class_weights": self.class_weights,
                "task": self.task,
                "multi_label_mode": self.multi_label_mode,
                "both_directions": self.both_directions,
                "stop_target_gradient": self.stop_target_gradient,
                "min_relative_distance": self.min_relative_distance,
                "members_layer": self.members_layer,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "encoder", "head"):  # not member_head: derived
            if config.get(key) is not None:
                # A copy: Keras's functional deserialization empties the dict it reads.
                config[key] = keras.saving.deserialize_keras_object(
                    copy.deepcopy(config[key]), custom_objects=custom_objects
                )
        return cls(**config)


def _check_members(a, b, what):
    """Static check that the two members of a pair have the same structure and shapes."""
    try:
        keras.tree.assert_same_structure(a, b)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"The original and counterfactual {what} of a pair differ in structure: {error}"
        ) from error
    for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        su, sv = tuple(u.shape)[1:], tuple(v.shape)[1:]
        compatible = len(su) == len(sv) and all(
            p is None or q is None or p == q for p, q in zip(su, sv)
        )
        if not compatible or u.dtype != v.dtype:
            raise ValueError(
                f"The original and counterfactual {what} of a pair must have the same "
                f"shape and dtype; got {tuple(u.shape)} {u.dtype} and {tuple(v.shape)} {v.dtype}."
            )
