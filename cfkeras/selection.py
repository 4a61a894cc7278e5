"""Best-validation-epoch model selection, for single models and stacked ensembles."""

import math

import keras

from cfkeras import _keras_private
from cfkeras.models.ensemble import StackedEnsemble

MODES = ("auto", "min", "max")


class BestEpochWeights(keras.callbacks.Callback):
    """Restores, at the end of training, the weights of the best validation epoch.

    Tracks a monitored value every epoch, keeps a copy of the weights of the
    best epoch so far, and restores them when training ends (however many
    epochs ran). The paper's protocol for its ensembles (Teney et al., ECCV
    2020, supplement C: the epoch of best validation accuracy).

    Two selections:

    * whole model (default): one epoch for everything `fit` trains, chosen
      on `monitor` (for a `StackedEnsemble`, the ensemble's averaged output);
    * per member (`per_member=True`, for a model that is or wraps a
      `StackedEnsemble`): member k keeps its own best epoch, chosen on
      `member_monitor.format(index=k)`. Those values are read from the epoch
      logs, where `StackedEnsemble.fit` puts them (`val_member_{k}_accuracy`,
      `val_member_{k}_loss`); when the model does not log them (e.g. a
      `GradientSupervisionModel` wrapping the ensemble), pass
      `validation_data` and this callback computes `member_{k}_accuracy` with
      `StackedEnsemble.evaluate_members` and adds them to the logs as
      `val_member_{k}_accuracy` (later callbacks, e.g. TensorBoard, see them).

    Ties keep the earlier epoch; NaN is never best. Unlike
    `keras.callbacks.EarlyStopping(restore_best_weights=True)`, it never stops
    training, restores also when every epoch ran, and can select per member.
    Only the model's weights are restored, not the optimizer's state.

    Attributes:
        best_epoch: 0-based index of the best epoch (whole-model selection).
        best_value: the monitored value at that epoch.
        best_epochs: per-member selection: each member's best epoch.
        best_values: per-member selection: each member's best value.

    Args:
        monitor: the logged value to select on, e.g. `"val_accuracy"`.
        mode: `"max"`, `"min"`, or `"auto"` (max for names containing
            "acc" or "auc", else min).
        per_member: select every member of a `StackedEnsemble` separately.
        member_monitor: with `per_member`, the logged name of member k's
            value as a template with `{index}`; default: `monitor` with
            `member_{index}_` after its `val_` prefix
            (`"val_member_{index}_accuracy"` for `"val_accuracy"`).
        validation_data: with `per_member`, an iterable of `(x, y[, w])`
            batches (or pairs) on which to compute the members' accuracies
            when the model does not log them.
        verbose: print the selection at the end of training.

    Example:

    >>> import numpy as np, keras, cfkeras.selection
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    >>> model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    >>> x, y = np.random.rand(32, 2), np.random.randint(0, 2, 32)
    >>> select = cfkeras.selection.BestEpochWeights("val_accuracy", mode="max")
    >>> history = model.fit(x, y, validation_split=0.25, epochs=3, verbose=0, callbacks=[select])
    >>> best = select.best_epoch, select.best_value  # the restored epoch (0-based)
    """

    def __init__(
        self,
        monitor="val_accuracy",
        mode="auto",
        per_member=False,
        member_monitor=None,
        validation_data=None,
        verbose=0,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
        if not per_member and (member_monitor is not None or validation_data is not None):
            raise ValueError("`member_monitor` and `validation_data` apply to per_member=True.")
        self.monitor = monitor
        self.mode = mode
        self.per_member = bool(per_member)
        if member_monitor is None:
            prefix = "val_" if monitor.startswith("val_") else ""
            member_monitor = f"{prefix}member_{{index}}_{monitor[len(prefix) :]}"
        self.member_monitor = member_monitor
        self.validation_data = validation_data
        self.verbose = verbose
        if mode == "auto":
            name = monitor.lower()
            mode = "max" if ("acc" in name or "auc" in name) else "min"
        self._sign = 1.0 if mode == "max" else -1.0
        self._reset()

    def _reset(self):
        self.best_epoch = None
        self.best_value = None
        self.best_epochs = None
        self.best_values = None
        self._best_weights = None

    def _improves(self, value, best):
        if value is None or math.isnan(value):
            return False
        return best is None or self._sign * (value - best) > 0

    def _value(self, logs, key):
        if key not in logs:
            raise ValueError(
                f"BestEpochWeights: {key!r} is not in the epoch logs (keys: {sorted(logs)}). "
                "Pass validation_data to fit for a val_ value"
                + (
                    ", or validation_data to this callback for per-member accuracies."
                    if self.per_member
                    else "."
                )
            )
        return float(logs[key])

    # === Callback hooks ===

    def on_train_begin(self, logs=None):
        self._reset()
        if self.per_member:
            self._ensemble = _find_ensemble(self.model)
            members = self._ensemble.num_members
            self.best_epochs = [None] * members
            self.best_values = [None] * members
            self._best_weights = [None] * members

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self.per_member:
            value = self._value(logs, self.monitor)
            if self._improves(value, self.best_value):
                self.best_epoch, self.best_value = epoch, value
                self._best_weights = self.model.get_weights()
            return
        if self.validation_data is not None:
            results = self._ensemble.evaluate_members(self.validation_data)
            logs.update({f"val_{key}": value for key, value in results.items()})
        for k, member in enumerate(self._ensemble.members):
            value = self._value(logs, self.member_monitor.format(index=k))
            if self._improves(value, self.best_values[k]):
                self.best_epochs[k], self.best_values[k] = epoch, value
                self._best_weights[k] = member.get_weights()

    def on_train_end(self, logs=None):
        if not self.per_member:
            if self._best_weights is not None:
                self.model.set_weights(self._best_weights)
                if self.verbose:
                    print(
                        f"BestEpochWeights: restored epoch {self.best_epoch + 1} "
                        f"({self.monitor} = {self.best_value:.5g})."
                    )
            return
        for k, member in enumerate(self._ensemble.members):
            if self._best_weights[k] is not None:
                member.set_weights(self._best_weights[k])
        if self.verbose:
            chosen = ", ".join(
                f"member {k}: epoch {e + 1}"
                for k, e in enumerate(self.best_epochs)
                if e is not None
            )
            print(f"BestEpochWeights: restored {chosen}.")


def _find_ensemble(model):
    """The one `StackedEnsemble` that `model` is or wraps."""
    if isinstance(model, StackedEnsemble):
        return model
    found = [
        layer
        for layer in _keras_private.flatten_layers(model)
        if isinstance(layer, StackedEnsemble)
    ]
    if len(found) != 1:
        raise ValueError(
            "per_member=True needs a model that is or wraps exactly one StackedEnsemble; "
            f"{model.name!r} contains {len(found)}."
        )
    return found[0]
