"""The gradient-supervision model (Teney, Abbasnejad & van den Hengel, 2020).

The GS term is `GradientSupervisionModel.gradient_supervision_term`: one
function from the points of a batch of pairs in the GS space to the term.
"""

import copy
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from cfkeras import _keras_private
from cfkeras import losses as gs_losses
from cfkeras import metrics as pair_metrics
from cfkeras.models import graph
from cfkeras.models.trainer import PairTrainer, global_sum
from cfkeras.pairs import COUNTERFACTUAL, ORIGINAL, flatten_pair_batch, is_pair

TASKS = ("auto",) + pair_metrics.TASKS
# Compiled losses that make several logits independent labels (task "multilabel").
_BINARY_LOSS_NAMES = ("binary_crossentropy", "bce", "binary_focal_crossentropy")


def _is_binary_loss(loss):
    """Whether `loss` (as passed to `compile`) is a binary cross-entropy."""
    if isinstance(loss, str):
        return loss in _BINARY_LOSS_NAMES
    if isinstance(loss, (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)):
        return True
    function = getattr(loss, "fn", loss)  # a LossFunctionWrapper's function
    return function in (
        keras.losses.binary_crossentropy,
        keras.losses.binary_focal_crossentropy,
    )


MULTI_LABEL_MODES = ("sum", "per_label")


class Forward(NamedTuple):
    """The head's outputs at points of the GS space.

    `logits`: pre-activation logits `(batch, classes)` (an ensemble's: the
    mean of its members'); `activation`: the output activation stripped to
    get them (`"sigmoid"`, `"softmax"` or None); `member_logits`: an
    ensemble's stacked member logits `(batch, members, classes)`, else None.
    """

    logits: object
    activation: object
    member_logits: object


class GSTerm(NamedTuple):
    """The gradient-supervision term of a batch of `2n` rows `[x_i; x_j]`.

    `loss`: the term to weight by `gs_weight`: the weighted sum of
    `1 - cos` over supervised points divided by the number of supervised
    points over all replicas (0 when there is none). `units`: cosines per
    row (an ensemble's members, else 1). `cos`, `valid`, `point_weight`:
    `(2n, units)` cosines (0 where invalid), whether each is defined, and
    each one's weight in `loss` (0 where not supervised). `labelled`:
    `(2n,)` rows whose pair asks for supervision (labels differ, direction
    and weight active); `active`: rows counted at all. `forward`: the head's
    outputs at the rows (`Forward`); `task`: the resolved task.
    """

    loss: object
    units: int
    cos: object
    valid: object
    point_weight: object
    labelled: object
    active: object
    forward: Forward
    task: str


@keras.saving.register_keras_serializable(package="cfkeras")
class GradientSupervisionModel(PairTrainer):
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
            reads it from the output activation and width, and for a model
            that outputs several logits from the compiled loss (a binary
            cross-entropy means multi-label, anything else multi-class).
        multi_label_mode: `"sum"`: one cosine on the summed contrast (default);
            `"per_label"`: one cosine per changed label, averaged.
        both_directions: supervise `x_j -> x_i` as well as `x_i -> x_j`.
        stop_target_gradient: treat `x_j - x_i` as a constant when it depends
            on trainable layers (default: differentiate the formula as
            written).
        min_relative_distance: pairs closer than this relative to their norms
            in the GS space are not supervised (counted in `gs_skipped`).
        gradient_of: `"contrast"` (default): the label-aware contrast logit
            above, so pairs of equal labels carry no GS term;
            `"label_logit"`: the gradient of the model's own logit, `f`
            (binary) or `f_{y_i}`, the logit of `x_i`'s label (multi-class),
            aligned with `x_j - x_i` for *every* pair, equal labels included
            (`cfkeras.losses.label_logit_weights`). It is the label-blind
            control of the paper's "random relations" row; not defined for
            multi-label outputs; `class_selection` and `class_weights` are
            then unused. With a head linear in the GS space (e.g. the
            paper's IMDb model) and `both_directions=True`, the term is a
            constant: the gradient is the same vector `w` at `x_i` and
            `x_j` and the two steps are opposite, so `cos(w, x_j - x_i) +
            cos(w, x_i - x_j) = 0` for every pair, the loss is exactly 1 and
            it trains nothing; use `both_directions=False` there.
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

    # GS needs class labels (the contrast of a pair): `fit` checks them.
    classification_labels = True

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
        gradient_of="contrast",
        **kwargs,
    ):
        super().__init__(**kwargs)
        member_head = None
        if members_layer == "auto":
            has_members = (
                model is not None
                and gs_layer is not None
                and graph.has_layer(model, graph.MEMBER_LOGITS)
            )
            members_layer = graph.MEMBER_LOGITS if has_members else None
        if members_layer is not None:
            if model is None or gs_layer is None:
                raise ValueError("`members_layer` needs `model` and `gs_layer`.")
            if multi_label_mode == "per_label":
                raise ValueError("`members_layer` does not support multi_label_mode='per_label'.")
            member_head = graph.member_head(model, gs_layer, members_layer)
        if model is not None:
            graph.check_single_output(model)
            if encoder is not None or head is not None:
                raise ValueError("Pass either `model` or `encoder` and `head`, not both.")
            if gs_layer is None:
                encoder, head = None, model
            else:
                encoder, head = graph.split_at_layer(model, gs_layer)
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
        if gradient_of not in gs_losses.GRADIENT_OF:
            raise ValueError(
                f"gradient_of must be one of {gs_losses.GRADIENT_OF}; received {gradient_of!r}."
            )
        if gradient_of == "label_logit" and (task == "multilabel" or multi_label_mode != "sum"):
            raise ValueError("gradient_of='label_logit' is not defined for multi-label outputs.")

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
        self.gradient_of = gradient_of
        self.member_head = member_head
        self._head_couples_batch = graph.couples_batch(head)

        self.gs_loss_tracker = keras.metrics.Mean(name="gs_loss")
        self.gs_cosine_tracker = keras.metrics.Mean(name="gs_cosine")
        self.gs_supervised_tracker = keras.metrics.Mean(name="gs_supervised")
        self.gs_skipped_tracker = keras.metrics.Sum(name="gs_skipped")
        self.pair_accuracy_tracker = keras.metrics.Mean(name="pair_accuracy")
        self.flip_rate_tracker = keras.metrics.Mean(name="flip_rate")
        if head.built and (encoder is None or encoder.built):
            self.built = True

    # === The GS term ===

    def gradient_supervision_term(self, h, y, row_weights=None, training=False):
        """The GS term of a batch of pairs, from its points `h` in the GS space.

        `h` and `y` hold the `2n` rows `[x_i; x_j]`: row `r`'s partner is row
        `(r + n) mod 2n`. In the shape of keras-io's WGAN-GP
        `gradient_penalty`: an inner tape around the head, then the loss.

        Args:
            h: `(2n, ...)` points in the GS space (watched by the inner tape).
            y: `(2n, ...)` their labels.
            row_weights: optional `(2n,)` weight of each row.
            training: run the head in training mode (inference mode for the
                input gradient when the head couples the batch).

        Returns:
            A `GSTerm`.
        """
        n = ops.shape(h)[0] // 2
        partner = lambda t: ops.concatenate([t[n:], t[:n]], axis=0)  # noqa: E731
        per_label = self.multi_label_mode == "per_label"

        # 1. Inner tape: the head's logits at the points h.
        with tf.GradientTape(watch_accessed_variables=False, persistent=per_label) as tape:
            tape.watch(h)
            forward = self.forward(h, training and not self._head_couples_batch)
            stacked = forward.member_logits is not None
            logits = forward.member_logits if stacked else forward.logits
            dtype = gs_losses.float_dtype(logits)
            logits = ops.cast(logits, dtype)
            # 2. The contrast logit z = sum_c w_c f_c: w from the labels of a
            #    row and of its partner (sign convention: cfkeras.losses).
            width = forward.logits.shape[-1]
            if self.gradient_of == "label_logit":
                weights = gs_losses.label_logit_weights(y, width)
            else:
                weights = gs_losses.contrast_weights(
                    y, partner(y), width, self.class_selection, self.class_weights
                )
            weights = ops.cast(weights, dtype)
            # Members share no weights: the gradient of the sum over members
            # is each member's own gradient, block-wise.
            contrast = ops.sum((weights[:, None, :] if stacked else weights) * logits)
        task = self._resolve_task(forward.activation, width)
        if self.gradient_of == "label_logit" and task == "multilabel":
            raise ValueError("gradient_of='label_logit' is not defined for multi-label outputs.")

        # 3. The cosine between the input gradient of z and the step to the
        #    partner; one per member slice of an ensemble's stacked space.
        origin, target = h, partner(h)
        if self.stop_target_gradient:
            origin, target = ops.stop_gradient(origin), ops.stop_gradient(target)
        if per_label and task == "multilabel":
            cos, valid = self._per_label_cosines(tape, logits, h, weights, origin, target)
        else:
            units = logits.shape[1] if stacked else 1
            per_unit = lambda a: ops.reshape(a, (ops.shape(a)[0] * units, -1))  # noqa: E731
            origin, target = per_unit(origin), per_unit(target)
            # A row's counterfactual norm is its partner's norm: computed once.
            norms = ops.sum(ops.square(ops.cast(origin, dtype)), axis=-1)
            partner_norms = ops.reshape(partner(ops.reshape(norms, (-1, units))), (-1,))
            cos, valid = gs_losses.cosine_alignment(
                per_unit(tape.gradient(contrast, h)),
                origin,
                target,
                self.min_relative_distance,
                squared_norms=(norms, partner_norms),
            )
            cos, valid = ops.reshape(cos, (-1, units)), ops.reshape(valid, (-1, units))
        if self.gs_weight == 0:
            # Reported, not differentiated: no second-order pass for nothing.
            cos = ops.stop_gradient(cos)

        # 4. Supervised points: labels that differ (a non-zero contrast), the
        #    directions asked for, a positive weight, and a defined cosine.
        rows = ops.shape(cos)[0]
        active = ops.ones((rows,), "bool")
        if not self.both_directions:
            active = ops.arange(rows) < n
        if row_weights is not None:
            active = ops.logical_and(active, row_weights > 0)
        labelled = ops.logical_and(ops.sum(ops.abs(weights), axis=-1) > 0, active)
        supervised = ops.logical_and(labelled[:, None], valid)

        # 5. Reduction: the weighted sum of 1 - cos over supervised points,
        #    divided by their count over all replicas (summing the replicas'
        #    gradients then gives the global mean); 0 when none is supervised.
        point_weight = ops.cast(supervised, cos.dtype)
        if row_weights is not None:
            point_weight = point_weight * ops.cast(row_weights, cos.dtype)[:, None]
        count = global_sum(ops.sum(point_weight))
        loss = ops.sum(point_weight * (1.0 - cos)) / ops.where(count > 0, count, 1.0)
        return GSTerm(loss, cos.shape[1], cos, valid, point_weight, labelled, active, forward, task)

    def _per_label_cosines(self, tape, logits, h, weights, origin, target):
        """`multi_label_mode="per_label"`: one cosine per changed label, the
        mean over them weighted by `|w_c|`; `(2n, 1)` cosines and validity."""
        width = logits.shape[-1]
        # One input gradient per label (rows are independent), not
        # `tape.batch_jacobian`: differentiating its pfor loop again under
        # XLA makes the inputs compile-time constants, so the train step
        # recompiled on every batch. Costs one backward pass per label.
        ones = ops.ones_like(logits)
        jacobian = ops.stack(
            [
                tape.gradient(
                    logits, h, output_gradients=ones * ops.one_hot(c, width, dtype=logits.dtype)
                )
                for c in range(width)
            ],
            axis=1,
        )  # (2n, C, ...)
        rows = ops.shape(jacobian)[0]
        jacobian = ops.reshape(jacobian, (rows * width, -1))
        signs = ops.reshape(ops.sign(weights), (-1, 1))
        repeat = lambda a: ops.repeat(ops.reshape(a, (rows, -1)), width, axis=0)  # noqa: E731
        cos, valid = gs_losses.cosine_alignment(
            jacobian * signs, repeat(origin), repeat(target), self.min_relative_distance
        )
        label_weight = ops.reshape(ops.abs(weights), (-1,)) * ops.cast(valid, weights.dtype)
        label_weight = ops.reshape(label_weight, (rows, width))
        total = ops.sum(label_weight, axis=-1)
        valid = total > 0
        cos = ops.sum(label_weight * ops.reshape(cos, (rows, width)), axis=-1)
        cos = cos / ops.where(valid, total, ops.ones_like(total))
        return cos[:, None], valid[:, None]

    # === Losses ===

    def compute_pair_losses(self, x, y, sample_weight=None, training=False):
        """The one loss routine of `train_step` and `test_step` for pairs.

        Public so that the loss can be inspected and differentiated outside
        `fit` (tests, benchmarks, callbacks), with no weight update.

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
        x_all, y_all, weight_all = flatten_pair_batch(x, y, sample_weight)
        y_i, y_j = y[ORIGINAL], y[COUNTERFACTUAL]
        n = ops.shape(keras.tree.flatten(x_all)[0])[0] // 2
        h = self._encode(x_all, training)
        if isinstance(h, (list, tuple, dict)):
            raise ValueError(
                "The GS space must be a single tensor; the encoder returns a structure."
            )

        term = self.gradient_supervision_term(h, y_all, weight_all, training)
        forward = term.forward
        if self._head_couples_batch and training:
            forward = self.forward(h, training=True)
        y_pred = graph.activate(forward.logits, forward.activation)
        main_objective, main_loss = self.main_loss(
            x_all, y_all, y_pred, forward, weight_all, training
        )
        total = ops.cast(main_objective, term.loss.dtype) + self.gs_weight * term.units * (
            term.loss
        )

        # Statistics: per replica, for the trackers and callbacks.
        point_weight, cos = term.point_weight, term.cos
        count = ops.sum(point_weight)
        safe_count = ops.where(count > 0, count, 1.0)
        any_valid = ops.any(term.valid, axis=1)
        valid_units = ops.cast(term.valid, cos.dtype)
        both_correct, flipped = pair_metrics.pair_outcomes(
            forward.logits[:n], forward.logits[n:], y_i, y_j, term.task
        )
        pair_weight = None if weight_all is None else (weight_all[:n] + weight_all[n:]) / 2.0
        stats = {
            # An ensemble reports the mean over members, comparable with one model.
            "loss": ops.cast(main_loss, term.loss.dtype) + self.gs_weight * term.loss,
            "main_loss": main_loss,
            "gs_loss": (ops.sum(point_weight * (1.0 - cos)) / safe_count, count),
            "gs_cosine": (ops.sum(point_weight * cos) / safe_count, count),
            "gs_supervised": ops.cast(ops.logical_and(term.labelled, any_valid), "float32"),
            "gs_cosine_per_point": ops.sum(valid_units * cos, axis=1)
            / ops.maximum(ops.sum(valid_units, axis=1), 1.0),
            "gs_skipped": ops.sum(
                ops.cast(ops.logical_and(term.labelled, ops.logical_not(any_valid)), "float32")
            ),
            "pair_accuracy": ops.cast(both_correct, "float32"),
            "flip_rate": ops.cast(flipped, "float32"),
            "x": x_all,
            "y": y_all,
            "y_pred": y_pred,
            "sample_weight": weight_all,
            "pair_weight": pair_weight,
            "active_weight": ops.cast(term.active, "float32"),
        }
        return total, stats

    def compute_unpaired_losses(self, x, y, sample_weight=None, training=False):
        """The main loss of an unpaired batch (an out-of-domain test set, or the
        augmentation baseline trained through the very same step)."""
        forward = self.forward(self._encode(x, training), training)
        y_pred = graph.activate(forward.logits, forward.activation)
        objective, loss = self.main_loss(x, y, y_pred, forward, sample_weight, training)
        stats = {"loss": loss, "main_loss": loss, "x": x, "y": y, "y_pred": y_pred}
        stats["sample_weight"] = sample_weight
        return objective, stats

    def main_loss(self, x, y, y_pred, forward, sample_weight, training):
        """`(objective, reported)` main loss of the rows `x`, `y`.

        For an ensemble the objective is the sum over members of each
        member's compiled loss (each member gets the gradient it would get
        alone) and the reported value their mean; otherwise both are the
        compiled loss of `y_pred`.
        """
        if forward.member_logits is None:
            loss = _keras_private.compute_loss(self, x, y, y_pred, sample_weight, training)
            return loss, loss
        members, classes = forward.member_logits.shape[1:]
        # Reshape the logits, then activate: Keras's cross-entropies read the
        # logits that sigmoid/softmax cache on their output; activated then
        # reshaped, the loss came from probabilities clipped to [1e-7, 1 - 1e-7]
        # and a saturated member got no gradient.
        flat = ops.reshape(forward.member_logits, (-1, classes))
        predictions = graph.activate(flat, forward.activation)
        repeat = lambda t: None if t is None else ops.repeat(t, members, axis=0)  # noqa: E731
        mean = _keras_private.compute_loss(
            self, x, repeat(y), predictions, repeat(sample_weight), training
        )
        # Regularisation losses are in `mean` once, and must stay once.
        extra = [_keras_private.aggregate_additional_loss(self, loss) for loss in self.losses]
        extra = ops.sum(ops.stack(extra)) if extra else ops.zeros((), mean.dtype)
        return members * mean - (members - 1) * ops.cast(extra, mean.dtype), mean

    # === Trackers ===

    def pair_trackers(self):
        return [
            self.gs_loss_tracker,
            self.gs_cosine_tracker,
            self.gs_supervised_tracker,
            self.gs_skipped_tracker,
            self.pair_accuracy_tracker,
            self.flip_rate_tracker,
        ]

    def update_pair_trackers(self, stats):
        self.gs_loss_tracker.update_state(*stats["gs_loss"])
        self.gs_cosine_tracker.update_state(*stats["gs_cosine"])
        self.gs_supervised_tracker.update_state(
            stats["gs_supervised"], sample_weight=stats["active_weight"]
        )
        self.gs_skipped_tracker.update_state(stats["gs_skipped"])
        self.pair_accuracy_tracker.update_state(
            stats["pair_accuracy"], sample_weight=stats["pair_weight"]
        )
        self.flip_rate_tracker.update_state(stats["flip_rate"], sample_weight=stats["pair_weight"])

    # === Forward ===

    def _encode(self, x, training):
        if self.encoder is None:
            return x
        return self.encoder(x, training=training)

    def _output_activation(self):
        """The head's output layer and its activation, if sigmoid/softmax."""
        layer = graph.output_layer(self.head)
        name = getattr(getattr(layer, "activation", None), "__name__", None)
        return (layer, name) if name in graph.OUTPUT_ACTIVATIONS else (None, None)

    def forward(self, h, training):
        """The head's `Forward` outputs (logits, not probabilities) at points `h`."""
        layer, activation = self._output_activation()
        if self.member_head is not None:
            member_logits = self.member_head(h, training=training)
            return Forward(ops.mean(member_logits, axis=1), activation, member_logits)
        if layer is None:
            return Forward(self.head(h, training=training), None, None)
        saved = layer.activation
        layer.activation = keras.activations.linear
        try:
            logits = self.head(h, training=training)
        finally:
            layer.activation = saved
        return Forward(logits, activation, None)

    def _resolve_task(self, activation, width):
        if self.task != "auto":
            return self.task
        if activation == "softmax":
            return "multiclass"
        if width == 1:
            return "binary"
        if activation == "sigmoid" or self._compiled_loss_is_binary():
            return "multilabel"
        return "multiclass"

    def _compiled_loss_is_binary(self):
        """Whether the compiled loss is a binary (per-label) cross-entropy:
        then a model that outputs several logits is multi-label."""
        return _is_binary_loss(getattr(self, "loss", None))

    def call(self, inputs, training=None):
        if is_pair(inputs):
            return {
                key: self.call(inputs[key], training=training) for key in (ORIGINAL, COUNTERFACTUAL)
            }
        return self.head(self._encode(inputs, training), training=training)

    def serving_model(self):
        return self.model if self.model is not None else self.encoder

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
                "gradient_of": self.gradient_of,
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
