"""One training run of each trainer, for `test_resume_determinism.py` (run as a script).

`python resume_run.py MODE BACKUP_DIR` trains GS on random relations, a
stacked ensemble on flattened pairs and CAT (one warm-up epoch, then CAT) for
3 epochs each, every model with dropout, with `keras.utils.set_random_seed(0)`,
TensorFlow's op determinism, `cfkeras.pairs.EpochSeed` data orders and
`keras.callbacks.BackupAndRestore(BACKUP_DIR/<trainer>)`, and prints every
batch's loss (by epoch) and the final weights of each as JSON. MODE `full`
trains uninterrupted; `interrupt` raises from a callback in the middle of
epoch 2 (after the backup of epoch 1); `resume` is run afterwards in a fresh
process with the same BACKUP_DIR and finishes the interrupted runs.
"""

import json
import os
import sys
import warnings

warnings.simplefilter("ignore")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cfkeras  # noqa: E402
from cfkeras.pairs import EpochSeed, Pairs  # noqa: E402

EPOCHS, INTERRUPTED_EPOCH, INTERRUPTED_BATCH = 3, 2, 1


class BatchLosses(keras.callbacks.Callback):
    """Every batch's running `loss`, by epoch (kept when the run is interrupted)."""

    def __init__(self):
        super().__init__()
        self.losses = {}

    def on_train_batch_end(self, batch, logs=None):
        self.losses.setdefault(self.epoch, []).append(float(logs["loss"]))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == INTERRUPTED_EPOCH and batch == INTERRUPTED_BATCH:
            raise RuntimeError("interrupted")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def dense_pairs(n=16, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = (np.arange(n) % 2).astype("float32")
    return Pairs(x_i, x_j, y_i, 1 - y_i)


def dense_model(d=5, name="model"):
    # Dropout: its masks must resume too (cfkeras saves the seed states).
    inputs = keras.Input((d,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dropout(0.3)(hidden))
    return keras.Model(inputs, outputs, name=name)


def gradient_supervision():
    gs = cfkeras.GradientSupervisionModel(dense_model(), gs_layer="hidden", gs_weight=1.0)
    gs.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy", jit_compile=False)
    seed = EpochSeed(1)
    data = dense_pairs().random_relations(batch_size=4, partners="different_label", seed=seed)
    return gs, data, [seed]


def ensemble():
    model = cfkeras.models.stacked_ensemble(lambda k: dense_model(name=f"m{k}"), 2)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy", jit_compile=False
    )
    seed = EpochSeed(2)
    return model, dense_pairs(seed=1).flatten(batch_size=8, seed=seed), [seed]


def counterfactual_adversarial():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=6, dropout=0.1,
    )  # fmt: skip
    model = cfkeras.encoders.encoder_classifier(backbone, num_classes=2, dropout=0.1)
    cat = cfkeras.models.CounterfactualAdversarialModel(model, warmup_epochs=1, cal_steps=1)
    cat.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    rng = np.random.default_rng(2)
    mask = np.arange(6) < rng.integers(2, 7, (2, 12, 1))
    tokens = np.where(mask, rng.integers(1, 30, (2, 12, 6)), 0).astype("int32")
    inputs = [
        {"token_ids": t, "segment_ids": np.zeros_like(t), "padding_mask": m}
        for t, m in zip(tokens, mask)
    ]
    y = np.arange(12) % 2
    seed = EpochSeed(3)
    return cat, Pairs(*inputs, y, 1 - y).to_dataset(batch_size=4, seed=seed), [seed]


TRAINERS = {"gs": gradient_supervision, "ensemble": ensemble, "cat": counterfactual_adversarial}


def main(mode, backup_dir):
    tf.config.experimental.enable_op_determinism()
    results = {}
    for name, build in TRAINERS.items():
        keras.utils.set_random_seed(0)
        model, data, callbacks = build()
        backup = keras.callbacks.BackupAndRestore(os.path.join(backup_dir, name))
        losses = BatchLosses()
        callbacks = callbacks + [backup, losses]
        if mode == "interrupt":
            callbacks.append(Interrupt())
        try:
            model.fit(data, epochs=EPOCHS, callbacks=callbacks, verbose=0)
            interrupted = False
        except RuntimeError as error:
            if str(error) != "interrupted":
                raise
            interrupted = True
        results[name] = {
            "interrupted": interrupted,
            "batch_losses": losses.losses,
            "weights": [w.tolist() for w in model.get_weights()],
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
