"""The stacked ensemble and CAT on one device or mirrored over two (run as a script).

`python mirrored_run.py single|mirrored` splits the host CPU into two logical
devices, then trains each trainer for 4 steps of one global batch each with
the same initial weights and data, on the default strategy (`single`) or
under `tf.distribute.MirroredStrategy` over the two devices (`mirrored`),
and prints every step's logs and the final weights as JSON, for
`test_distributed_trainers.py`. No XLA: XLA with MirroredStrategy on logical
CPU devices fails inside TensorFlow.
"""

import json
import sys
import warnings

warnings.simplefilter("ignore")

import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import cfkeras  # noqa: E402

STEPS = 4


def dense_model(d=5, name="model"):
    inputs = keras.Input((d,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden), name=name)


def ensemble_data():
    # 8 pairs a global batch: replica 0 holds pairs 0-3, replica 1 pairs 4-7,
    # with 1 and 3 differing pairs (uneven GS supervision).
    rng = np.random.default_rng(0)
    n, d = 8, 5
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = rng.integers(0, 2, n).astype("float32")
    differs = np.array([0, 0, 1, 0, 1, 0, 1, 1], bool)
    y_j = np.where(differs, 1 - y_i, y_i).astype("float32")
    pairs = tf.data.Dataset.from_tensors(
        ({"original": x_i, "counterfactual": x_j}, {"original": y_i, "counterfactual": y_j})
    )
    flat = tf.data.Dataset.from_tensors((np.concatenate([x_i, x_j]), np.concatenate([y_i, y_j])))
    return pairs.repeat(), flat.repeat()


def build_ensemble(gs):
    model = cfkeras.models.stacked_ensemble(
        lambda k: dense_model(name=f"m{k}"), 2, gs_layer="hidden" if gs else None
    )
    if gs:
        model = cfkeras.GradientSupervisionModel(model, gs_layer=cfkeras.models.ensemble.GS_SPACE)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", jit_compile=False
    )
    return model


def cat_data():
    rng = np.random.default_rng(1)
    mask = np.arange(6) < rng.integers(2, 7, (8, 1))
    tokens = np.where(mask, rng.integers(1, 30, (8, 6)), 0).astype("int32")
    x = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": mask}
    return tf.data.Dataset.from_tensors((x, np.arange(8) % 2)).repeat()


def build_cat():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=6, dropout=0.0,
    )  # fmt: skip
    model = cfkeras.encoders.encoder_classifier(backbone, num_classes=2, dropout=0.0)
    cat = cfkeras.models.CounterfactualAdversarialModel(
        model, warmup_epochs=0, cal_steps=1, crm_learning_rate=0.05, seed=5
    )
    cat.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return cat


def run(strategy, build, data):
    keras.utils.set_random_seed(0)
    initial = build().get_weights()
    with strategy.scope():
        model = build()
        model.set_weights(initial)
    # One step per epoch: the history holds every step's logs.
    history = model.fit(data, steps_per_epoch=1, epochs=STEPS, verbose=0).history
    return {
        "history": {key: [float(v) for v in values] for key, values in history.items()},
        "initial": [w.tolist() for w in initial],
        "weights": [w.tolist() for w in model.get_weights()],
        "jit_compile": bool(model.jit_compile),
    }


def main(mode):
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.get_strategy()
    pairs, flat = ensemble_data()
    results = {
        "replicas": strategy.num_replicas_in_sync,
        "ensemble": run(strategy, lambda: build_ensemble(gs=False), flat),
        "ensemble_gs": run(strategy, lambda: build_ensemble(gs=True), pairs),
        "cat": run(strategy, build_cat, cat_data()),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
