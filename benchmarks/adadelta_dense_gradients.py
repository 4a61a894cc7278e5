"""Before/after: Adadelta with an Embedding under XLA, sparse vs dense gradients.

Keras applies an `Embedding`'s gradient as `IndexedSlices`; with Adadelta under
`jit_compile=True` XLA then compiles the train step again on every call. cfkeras
applies dense gradients. This script times, on the paper's IMDb text model
(vocabulary 20 000, embedding 50, 32 reviews a batch):

* "keras (sparse)": a plain `keras.Model`, `jit_compile=True`;
* "cfkeras (dense)": the same model trained through
  `cfkeras.GradientSupervisionModel` on the same unpaired batches (main loss
  only), `jit_compile=True`;
* "cfkeras GS (dense)": the same with gradient supervision on 16 pairs.

It reports the median wall time per step of `train_on_batch` after one warm-up
step, and how many times XLA compiled (read from an HLO dump directory).

Run:

    python benchmarks/adadelta_dense_gradients.py --steps 20 \
        --out benchmarks/results/adadelta_dense_gradients.json
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

VOCAB, LENGTH, BATCH = 20000, 400, 32


def run_variant(variant, steps):
    """Runs one variant in this process; returns a dict of timings."""
    import keras
    import numpy as np

    import cfkeras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    labels = rng.integers(0, 2, (BATCH, 1)).astype("float32")
    model = cfkeras.models.bag_of_embeddings_classifier(VOCAB, sequence_length=LENGTH)
    optimizer = keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-6)
    if variant == "keras_sparse":
        trainer, x, y = model, ids, labels
        trainer.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=True)
    else:
        gs_weight = 20.0 if variant == "cfkeras_gs_dense" else 0.0
        trainer = cfkeras.GradientSupervisionModel(
            model, gs_layer="mean_embedding", gs_weight=gs_weight
        )
        trainer.compile(optimizer=optimizer, loss="binary_crossentropy")
        x, y = ids, labels
        if variant == "cfkeras_gs_dense":
            half = BATCH // 2
            x = cfkeras.pairs.make_pair(ids[:half], ids[half:])
            y = cfkeras.pairs.make_pair(labels[:half], 1.0 - labels[:half])
    start = time.perf_counter()
    trainer.train_on_batch(x, y)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "median_step_ms": 1000 * float(np.median(times)), "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sparse-steps", type=int, default=5, help="the slow path: fewer steps")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps)))
        return
    results = {}
    for variant in ("keras_sparse", "cfkeras_dense", "cfkeras_gs_dense"):
        steps = args.sparse_steps if variant == "keras_sparse" else args.steps
        with tempfile.TemporaryDirectory() as dump:
            env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump}", TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--steps", str(steps)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            modules = {
                name.split(".")[0] for name in os.listdir(dump) if "before_optimizations" in name
            }
            result["xla_compilations"] = len(modules)
        results[variant] = result
        print(variant, result, flush=True)
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "results": results,
        "speedup_dense_vs_sparse": results["keras_sparse"]["median_step_ms"]
        / results["cfkeras_dense"]["median_step_ms"],
    }
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
