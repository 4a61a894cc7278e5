"""The optimizer update alone under XLA: Adam, Keras's Adadelta, cfkeras's Adadelta.

With dense gradients (what `cfkeras.GradientSupervisionModel` applies, see
`adadelta_dense_gradients.py`) every step updates every row of an embedding
table, and on a small model that update is most of the step. This script
compiles `optimizer.apply` with `jit_compile=True` for one variable per
shape (default: the 20 000 x 50 embedding table of `../shared/bench` M2 and
the 2048 x 1024 kernel of M3), interleaves the optimizers over `--reps`
repetitions of `--steps` timed updates, and reports the median time per
update and the median of per-repetition ratios to Adam. It also counts the
table-sized fusions in XLA's optimised HLO (each one a pass over memory).

    python benchmarks/adadelta_update.py --out benchmarks/results/adadelta_update
"""

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {"M2 embedding 20000x50": (20000, 50), "M3 kernel 2048x1024": (2048, 1024)}


def optimizers():
    import keras

    import cfkeras

    return {
        "adam": lambda: keras.optimizers.Adam(1e-3, epsilon=1e-7),
        "keras_adadelta": lambda: keras.optimizers.Adadelta(1.0, rho=0.9, epsilon=1e-6),
        "cfkeras_adadelta": lambda: cfkeras.optimizers.Adadelta(1.0, rho=0.9, epsilon=1e-6),
    }


def compiled_update(make, shape, seed=0):
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    variable = keras.Variable(rng.normal(size=shape).astype("float32"))
    gradient = tf.constant(rng.normal(size=shape).astype("float32") * 1e-3)
    optimizer = make()
    optimizer.build([variable])
    update = tf.function(lambda: optimizer.apply([gradient], [variable]), jit_compile=True)

    def step():
        update()
        return variable.value[0, 0].numpy()  # wait for the update

    return step


def fusion_counts(shape):
    """Table-sized fusions per optimizer, from an HLO dump in a subprocess."""
    import subprocess

    counts = {}
    for name in optimizers():
        with tempfile.TemporaryDirectory() as dump:
            code = (
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "import adadelta_update as a; "
                f"a.compiled_update(a.optimizers()[{name!r}], {tuple(shape)!r})()"
            )
            env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text")
            env["TF_CPP_MIN_LOG_LEVEL"] = "3"
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            text = "".join(p.read_text() for p in Path(dump).glob("*after_optimizations.txt"))
        dims = ",".join(str(d) for d in shape)
        counts[name] = len(re.findall(rf"= f32\[{dims}\]\{{1,0\}} fusion\(", text))
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    results = {}
    for label, shape in SHAPES.items():
        steps = {name: compiled_update(make, shape) for name, make in optimizers().items()}
        for step in steps.values():
            for _ in range(20):
                step()
        times = {name: [] for name in steps}
        names = list(steps)
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                ts = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    steps[name]()
                    ts.append(time.perf_counter() - start)
                times[name].append(float(np.median(ts)))
        adam = np.array(times["adam"])
        results[label] = {
            "shape": list(shape),
            "table_sized_fusions": fusion_counts(shape),
            "ms": {n: round(1e3 * float(np.median(t)), 3) for n, t in times.items()},
            "ratio_to_adam": {
                n: round(float(np.median(np.array(t) / adam)), 3) for n, t in times.items()
            },
            "ratio_range": {
                n: [round(float(v), 3) for v in np.percentile(np.array(t) / adam, [10, 90])]
                for n, t in times.items()
            },
        }
        print(label, json.dumps(results[label]), flush=True)

    report = {
        "command": "python " + " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"TensorFlow {tf.__version__}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reps": args.reps,
        "steps": args.steps,
        "results": results,
    }
    lines = [
        "# Optimizer update alone under XLA",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; {report['date']}.",
        "",
        "Median ms per `optimizer.apply` (median over repetitions of the median of "
        f"{args.steps} updates); ratio to Adam: median (p10-p90) of per-repetition ratios; "
        "fusions: table-sized fusions in XLA's optimised HLO (passes over memory).",
        "",
        "| variable | optimizer | ms | / Adam | fusions |",
        "|---|---|---|---|---|",
    ]
    for label, r in results.items():
        for name, ms in r["ms"].items():
            low, high = r["ratio_range"][name]
            lines.append(
                f"| {label} | {name} | {ms:.3f} | {r['ratio_to_adam'][name]:.2f} "
                f"({low:.2f}-{high:.2f}) | {r['table_sized_fusions'][name]} |"
            )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2))
        Path(f"{args.out}.md").write_text(markdown)


if __name__ == "__main__":
    main()
