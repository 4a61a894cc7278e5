"""`GradientSupervisionModel` under `tf.distribute.MirroredStrategy`.

Two logical CPU devices must be configured before TensorFlow initialises, so
the training runs in fresh processes: the same script once on one device and
once mirrored over two, with identical initial weights and data, printing its
results as JSON. The replicas are given different numbers of supervised points
(a global batch is split contiguously), so the GS term must be normalised by
the global count and the main loss scaled as Keras scales its losses for the
sum of the replicas' gradients to equal the single-device gradient.

No XLA here: XLA with MirroredStrategy on logical CPU devices fails in
TensorFlow itself.
"""

import textwrap

import numpy as np
import pytest
from concurrent_runs import run_modes

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    two = [tf.config.LogicalDeviceConfiguration()] * 2
    tf.config.set_logical_device_configuration(cpus[0], two)

    import keras
    import cfkeras

    mode = sys.argv[1]
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.get_strategy()

    # 16 pairs, batches of 8 pairs, no shuffling. Batch 1: pairs 0-3 have equal
    # labels, pairs 4-7 differ (replica 0 holds no supervised point, replica 1
    # holds 8). Batch 2: 1 differing pair of 4 on replica 0, 3 of 4 on replica 1.
    rng = np.random.default_rng(0)
    n, d = 16, 5
    x_i, x_j = rng.normal(size=(2, n, d)).astype("float32")
    y_i = rng.integers(0, 2, n).astype("float32")
    differs = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1], bool)
    y_j = np.where(differs, 1 - y_i, y_i).astype("float32")
    weight = rng.uniform(0.5, 2.0, n).astype("float32")
    weight[[5, 9]] = 0.0

    hidden_kernel = rng.normal(size=(d, 6)).astype("float32") * 0.5
    hidden_bias = rng.normal(size=6).astype("float32") * 0.1
    output_kernel = rng.normal(size=(6, 1)).astype("float32")
    output_bias = np.zeros(1, "float32")

    def batches(weighted):
        tensors = (
            {"original": x_i, "counterfactual": x_j},
            {"original": y_i, "counterfactual": y_j},
        )
        if weighted:
            tensors += (weight,)
        return tf.data.Dataset.from_tensor_slices(tensors).batch(8, drop_remainder=True)

    def run(weighted):
        with strategy.scope():
            inputs = keras.Input((d,))
            hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
            outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
            gs = cfkeras.GradientSupervisionModel(
                keras.Model(inputs, outputs), gs_layer="hidden", gs_weight=3.0
            )
            gs.set_weights([hidden_kernel, hidden_bias, output_kernel, output_bias])
            optimizer = keras.optimizers.SGD(0.5)
            gs.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=False)
        initial = [w.tolist() for w in gs.get_weights()]
        # One step per epoch: the history holds every step's logs.
        history = gs.fit(batches(weighted).repeat(), steps_per_epoch=1, epochs=6, verbose=0).history
        return {
            "history": {key: [float(v) for v in values] for key, values in history.items()},
            "initial": initial,
            "weights": [w.tolist() for w in gs.get_weights()],
            "jit_compile": bool(gs.jit_compile),
        }

    # The split of a global batch over the replicas, as the replicas see it.
    shards = []
    if mode == "mirrored":
        distributed = strategy.experimental_distribute_dataset(batches(False))
        for x, y in distributed:
            y_a = strategy.experimental_local_results(y["original"])
            y_b = strategy.experimental_local_results(y["counterfactual"])
            shards.append([int(np.sum(a.numpy() != b.numpy())) for a, b in zip(y_a, y_b)])

    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "shards": shards,
        "unweighted": run(False),
        "weighted": run(True),
    }))
    """
)

KEYS = ("loss", "main_loss", "gs_loss", "gs_cosine", "gs_supervised", "gs_skipped")


@pytest.fixture(scope="module")
def runs():
    """Results of the script on one device and mirrored, run concurrently."""
    return run_modes(["-c", SCRIPT], timeout=300)


def test_replicas_hold_uneven_supervision(runs):
    assert runs["single"]["replicas"] == 1
    assert runs["mirrored"]["replicas"] == 2
    # Contiguous split: pairs 0-3 on replica 0, 4-7 on replica 1.
    assert runs["mirrored"]["shards"] == [[0, 4], [1, 3]]


@pytest.mark.parametrize("weighting", ["unweighted", "weighted"])
def test_mirrored_matches_single_device(runs, weighting):
    single, mirrored = runs["single"][weighting], runs["mirrored"][weighting]
    assert single["jit_compile"] is False and mirrored["jit_compile"] is False
    differences = {}
    for key in KEYS:
        a, b = np.array(single["history"][key]), np.array(mirrored["history"][key])
        assert len(a) == 6 and np.all(np.isfinite(a)), key
        differences[key] = float(np.max(np.abs(a - b)))
    weights = [np.array(w) for w in single["weights"]]
    mirrored_weights = [np.array(w) for w in mirrored["weights"]]
    differences["weights"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(weights, mirrored_weights)
    )
    print(f"\n{weighting}: max |single - mirrored| {differences}")
    for key in KEYS:
        np.testing.assert_allclose(
            mirrored["history"][key], single["history"][key], atol=1e-5, err_msg=key
        )
    for a, b in zip(mirrored_weights, weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Every step is supervised, and the weights moved well beyond the tolerance.
    assert min(single["history"]["gs_supervised"]) > 0
    initial = [np.array(w) for w in single["initial"]]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, initial)) > 1e-2
