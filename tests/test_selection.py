"""Tests for `cfkeras.selection.BestEpochWeights`: best-validation-epoch selection.

The models do not learn (learning rate 0): a scripting callback sets their
weights at the start of every epoch, so each epoch's validation accuracy is
known in advance.
"""

import keras
import numpy as np
import pytest

import cfkeras
from cfkeras.models.ensemble import StackedEnsemble
from cfkeras.selection import BestEpochWeights

# Validation data: the label is the sign of the feature.
X = np.array([[1.0], [2.0], [-1.0], [-2.0]], "float32")
Y = np.array([1.0, 1.0, 0.0, 0.0], "float32")

# (kernel, bias) of a one-feature logistic unit, and its accuracy on X, Y.
ALL_WRONG = (-1.0, 0.0)  # 0.0
ALL_RIGHT = (1.0, 0.0)  # 1.0
LOW = (1.0, -1.5)  # 0.75: x = 1 wrong
HIGH = (1.0, 1.5)  # 0.75: x = -1 wrong
ONES = (-1.0, 0.5)  # 0.0: every logit of the wrong sign
# Per epoch, (member 0, member 1); the ensemble averages the two.
SCRIPT = [
    (ALL_WRONG, ALL_RIGHT),  # members 0.0 / 1.0, ensemble logit 0 -> 0.5
    (LOW, HIGH),  # members 0.75 / 0.75, ensemble (1, 0) -> 1.0
    (ALL_RIGHT, ONES),  # members 1.0 / 0.0, ensemble (0, 0.25) -> 0.5
]


def unit():
    x = keras.Input((1,))
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="output")(x))


def set_unit(model, weights):
    kernel, bias = weights
    model.get_layer("output").set_weights(
        [np.array([[kernel]], "float32"), np.array([bias], "float32")]
    )


def unit_weights(model):
    kernel, bias = model.get_layer("output").get_weights()
    return float(kernel[0, 0]), float(bias[0])


class Script(keras.callbacks.Callback):
    """Sets the weights of epoch `e` at its start."""

    def __init__(self, models, script):
        super().__init__()
        self.models, self.script = models, script

    def on_epoch_begin(self, epoch, logs=None):
        for model, weights in zip(self.models, self.script[epoch]):
            set_unit(model, weights)


def frozen_compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy", metrics=["accuracy"]
    )


def test_single_model_restores_the_best_epoch():
    model = unit()
    frozen_compile(model)
    script = [(ALL_WRONG,), (LOW,), (ALL_RIGHT,), (HIGH,), (ONES,)]
    select = BestEpochWeights("val_accuracy", mode="max")
    history = model.fit(
        X,
        Y,
        validation_data=(X, Y),
        epochs=5,
        verbose=0,
        callbacks=[Script([model], script), select],
    )
    assert history.history["val_accuracy"] == [0.0, 0.75, 1.0, 0.75, 0.0]
    assert (select.best_epoch, select.best_value) == (2, 1.0)
    assert unit_weights(model) == ALL_RIGHT


def test_ties_keep_the_earlier_epoch_and_min_mode():
    model = unit()
    frozen_compile(model)
    select = BestEpochWeights("val_accuracy", mode="auto")  # "acc" -> max
    model.fit(
        X,
        Y,
        validation_data=(X, Y),
        epochs=3,
        verbose=0,
        callbacks=[Script([model], [(LOW,), (HIGH,), (ALL_WRONG,)]), select],
    )
    assert (select.best_epoch, unit_weights(model)) == (0, LOW)

    select = BestEpochWeights("val_loss")  # auto -> min
    model.fit(
        X,
        Y,
        validation_data=(X, Y),
        epochs=3,
        verbose=0,
        callbacks=[Script([model], [(ALL_WRONG,), ((3.0, 0.0),), (ALL_RIGHT,)]), select],
    )
    assert (select.best_epoch, unit_weights(model)) == (1, (3.0, 0.0))


def fit_ensemble(select, epochs=3):
    ensemble = StackedEnsemble([unit(), unit()])
    frozen_compile(ensemble)
    history = ensemble.fit(
        X,
        Y,
        validation_data=(X, Y),
        epochs=epochs,
        verbose=0,
        callbacks=[Script(ensemble.members, SCRIPT), select],
    )
    return ensemble, history.history


def test_whole_ensemble_selection():
    ensemble, history = fit_ensemble(BestEpochWeights("val_accuracy"))
    assert history["val_accuracy"] == [0.5, 1.0, 0.5]
    assert history["val_member_0_accuracy"] == [0.0, 0.75, 1.0]
    assert history["val_member_1_accuracy"] == [1.0, 0.75, 0.0]
    assert [unit_weights(m) for m in ensemble.members] == [LOW, HIGH]


def test_per_member_selection_from_the_ensemble_logs():
    select = BestEpochWeights("val_accuracy", per_member=True)
    ensemble, _ = fit_ensemble(select)
    assert select.member_monitor == "val_member_{index}_accuracy"
    assert (select.best_epochs, select.best_values) == ([2, 0], [1.0, 1.0])
    assert [unit_weights(m) for m in ensemble.members] == [ALL_RIGHT, ALL_RIGHT]


def test_per_member_selection_under_gradient_supervision_with_validation_data():
    ensemble = StackedEnsemble([unit(), unit()])
    gs = cfkeras.GradientSupervisionModel(ensemble, gs_weight=1.0)
    frozen_compile(gs)
    pairs = cfkeras.Pairs(X[:2], X[2:], Y[:2], Y[2:])
    select = BestEpochWeights(per_member=True, validation_data=[(X, Y)])
    whole = BestEpochWeights("val_accuracy")
    history = gs.fit(
        pairs.to_dataset(batch_size=2, shuffle=False),
        validation_data=(X, Y),
        epochs=3,
        verbose=0,
        callbacks=[Script(ensemble.members, SCRIPT), select, whole],
    )
    # The callback added the members' accuracies to the logs.
    assert history.history["val_member_0_accuracy"] == [0.0, 0.75, 1.0]
    assert history.history["val_ensemble_accuracy"] == history.history["val_accuracy"]
    assert select.best_epochs == [2, 0] and whole.best_epoch == 1
    # `whole` ends last and restores the whole model: epoch 1.
    assert [unit_weights(m) for m in ensemble.members] == [LOW, HIGH]


def test_missing_monitor_and_bad_arguments_raise():
    model = unit()
    frozen_compile(model)
    with pytest.raises(ValueError, match="'val_accuracy' is not in the epoch logs"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[BestEpochWeights()])
    with pytest.raises(ValueError, match="exactly one StackedEnsemble"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[BestEpochWeights(per_member=True)])
    with pytest.raises(ValueError, match="mode must be one of"):
        BestEpochWeights(mode="best")
    with pytest.raises(ValueError, match="per_member=True"):
        BestEpochWeights(validation_data=[(X, Y)])
