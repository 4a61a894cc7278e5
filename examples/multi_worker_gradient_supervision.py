"""Gradient supervision on two worker processes with MultiWorkerMirroredStrategy.

Launches, on this machine, a cluster of two TensorFlow workers talking over
loopback (`TF_CONFIG` with 127.0.0.1 ports chosen free at run time) and a
single-worker reference run with the same global batch, trains the same
`cfkeras.GradientSupervisionModel` (same initial weights, same pairs, same
`cfkeras.pairs.EpochSeed` order) in each, and compares the loss curves: the
per-batch loss of worker 0 and of the reference, and the final weights.

Across machines, run the worker part (`--worker`) once per machine with a
`TF_CONFIG` naming every machine's `host:port` and its own index; nothing in
the training code changes.

Run:

    python examples/multi_worker_gradient_supervision.py [--timeout 300] [--epochs 3]

It prints one JSON line: the curves, their largest absolute difference and the
wall time. Every process is bounded by `--timeout` and killed on failure.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

PAIRS, FEATURES, GLOBAL_BATCH = 32, 5, 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count):
    """`count` TCP ports free on 127.0.0.1 now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# === One worker (or the single-worker reference) ===


def train(epochs):
    """Trains under the strategy that `TF_CONFIG` implies; returns the curves."""
    import tensorflow as tf

    # The strategy comes first, before TensorFlow runs any op.
    if "TF_CONFIG" in os.environ:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    import keras
    import numpy as np

    import cfkeras

    rng = np.random.default_rng(0)
    x_i, x_j = rng.normal(size=(2, PAIRS, FEATURES)).astype("float32")
    y_i = rng.integers(0, 2, PAIRS).astype("float32")
    # Some pairs share their label: the replicas hold uneven GS supervision.
    y_j = np.where(rng.random(PAIRS) < 0.6, 1 - y_i, y_i).astype("float32")
    pairs = cfkeras.Pairs(x_i, x_j, y_i, y_j)
    seed = cfkeras.pairs.EpochSeed(0)
    dataset = pairs.to_dataset(batch_size=GLOBAL_BATCH, seed=seed)
    options = tf.data.Options()
    # Each worker takes its part of every global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)

    weights = [
        rng.normal(size=(FEATURES, 6)).astype("float32") * 0.5,
        np.zeros(6, "float32"),
        rng.normal(size=(6, 1)).astype("float32"),
        np.zeros(1, "float32"),
    ]
    with strategy.scope():
        inputs = keras.Input((FEATURES,))
        hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
        outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
        gs = cfkeras.GradientSupervisionModel(
            keras.Model(inputs, outputs), gs_layer="hidden", gs_weight=3.0
        )
        gs.set_weights(weights)
        # No XLA: XLA under a multi-device strategy on CPU fails in TensorFlow.
        gs.compile(
            optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", jit_compile=False
        )

    class Curve(keras.callbacks.Callback):
        losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    history = gs.fit(dataset, epochs=epochs, callbacks=[seed, Curve()], verbose=0).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "batch_losses": Curve.losses,
        "epoch_losses": [float(v) for v in history["loss"]],
        "weights": [w.tolist() for w in gs.get_weights()],
    }


# === The launcher ===


def launch(tf_config, epochs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    # The workers import the cfkeras of this checkout, as the launcher would.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "--epochs", str(epochs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as one
    )


def collect(processes, timeout):
    """Every process's last JSON line; kills them all on timeout or failure."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for name, process in processes:
            try:
                out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired as error:
                raise RuntimeError(f"{name} did not finish within {timeout} s") from error
            if process.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for _, process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
    return results


def compare(epochs=3, timeout=300):
    """Runs two workers and the reference; returns the report dict."""
    start = time.monotonic()
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = [
        (
            f"worker {k}",
            launch({"cluster": cluster, "task": {"type": "worker", "index": k}}, epochs),
        )
        for k in range(2)
    ]
    processes.append(("single worker", launch(None, epochs)))
    worker_0, worker_1, single = collect(processes, timeout)
    difference = lambda a, b: max(abs(u - v) for u, v in zip(a, b))  # noqa: E731
    flat = lambda weights: [v for w in weights for v in _flatten(w)]  # noqa: E731
    return {
        "replicas": [worker_0["replicas"], single["replicas"]],
        "single_worker_batch_losses": single["batch_losses"],
        "two_worker_batch_losses": worker_0["batch_losses"],
        "max_loss_difference": difference(single["batch_losses"], worker_0["batch_losses"]),
        "max_epoch_loss_difference": difference(single["epoch_losses"], worker_0["epoch_losses"]),
        "max_weight_difference": difference(flat(single["weights"]), flat(worker_0["weights"])),
        "workers_agree": worker_0["weights"] == worker_1["weights"],
        "seconds": round(time.monotonic() - start, 1),
    }


def _flatten(value):
    if isinstance(value, list):
        return [v for item in value for v in _flatten(item)]
    return [value]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run one worker (TF_CONFIG)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train(args.epochs)), flush=True)
    else:
        print(json.dumps(compare(args.epochs, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
