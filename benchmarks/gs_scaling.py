"""Time per epoch and peak memory of the GS and plain steps vs batch size and model width.

Two model families of `../shared/bench/common.py` (see `gs_setup.py`):

* `mlp`: 2048 -> w -> w -> w -> 80 (M1 has w = 64), multi-label;
* `bow`: the bag-of-embeddings text model with embedding width w (M2 has 50).

An epoch is a fixed number of pairs (`--epoch-pairs`, synthetic data drawn as
in `common.make_batch`), so time per epoch is comparable across batch sizes.
Every point runs in a fresh subprocess: `fit` for one epoch (compilation
included, reported apart) and `--epochs` timed epochs; time per epoch is the
median of the timed epochs. Peak memory is the process's max RSS minus its RSS
once TensorFlow is imported and the data and `tf.data` pipeline are built
(`/proc/self/status`): the model, optimizer, compiled step and activations.
`gs` trains pairs through `cfkeras.GradientSupervisionModel`, `plain` the same
model on the same examples unpaired (`Pairs.flatten`, main loss only).

Writes `results/gs_scaling.{json,md,png}`; the Markdown states the growth
(log-log slopes) in one sentence per model family.

Usage (idle machine):

    python benchmarks/gs_scaling.py                      # both families, default sweeps
    python benchmarks/gs_scaling.py --models mlp --batches 16 32 --widths 8 16 \\
        --epoch-pairs 64 --epochs 1 --out-dir /tmp/gs     # a smoke run
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gs_setup  # noqa: E402
from process_memory import status_kb  # noqa: E402

KINDS = {"mlp": "mlp_small", "bow": "bow"}
DEFAULT_WIDTHS = {"mlp": [32, 64, 128, 256, 512, 1024], "bow": [25, 50, 100, 200, 400]}
BASE_WIDTH = {"mlp": 64, "bow": 50}
BASE_BATCH = {"mlp": 256, "bow": 32}
DEFAULT_BATCHES = [16, 32, 64, 128, 256, 512, 1024]


def run_point(args):
    """One (family, batch, width, mode) point in this process; prints `POINT {json}`."""
    import warnings

    import keras
    import tensorflow as tf

    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    common = gs_setup.load_common(args.shared)
    kind = KINDS[args.point_model]
    data = common.make_batch(kind, args.epoch_pairs)
    pairs = gs_setup.pairs(data)
    if args.point_mode == "plain":
        dataset = pairs.flatten(batch_size=2 * args.point_batch, seed=0)
    else:
        dataset = pairs.to_dataset(batch_size=args.point_batch, seed=0)
    baseline = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS

    keras.utils.set_random_seed(0)
    width = args.point_width
    if kind == "bow":
        model = gs_setup.keras_model(common, kind, embedding_dim=width)
    else:
        sizes = common.MLP_SIZES[kind]
        model = gs_setup.keras_model(common, kind, sizes=[sizes[0], width, width, width, sizes[-1]])
    gs = gs_setup.gs_model(common, model, kind)
    gs.compile(optimizer=gs_setup.make_optimizer(common), loss="binary_crossentropy")

    class EpochTimer(keras.callbacks.Callback):
        # Epoch hooks only: batch hooks would switch off Keras's async batch dispatch.
        def __init__(self):
            super().__init__()
            self.times, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    timer = EpochTimer()
    history = gs.fit(dataset, epochs=1 + args.epochs, verbose=0, callbacks=[timer])
    record = {
        "model": args.point_model,
        "mode": args.point_mode,
        "batch": args.point_batch,
        "width": width,
        "epoch_pairs": args.epoch_pairs,
        "steps_per_epoch": args.epoch_pairs // args.point_batch,
        "first_epoch_s": timer.times[0],
        "epoch_s": float(np.median(timer.times[1:])),
        "epoch_s_all": timer.times[1:],
        # CPU seconds of this process: wall >> cpu * threads means it waited for the CPU.
        "epoch_cpu_s": float(np.median(timer.cpu[1:])),
        "peak_mb": (status_kb("VmHWM") - baseline) / 1024,
        "final_loss": float(history.history["loss"][-1]),
        "params": int(model.count_params()),
    }
    print("POINT " + json.dumps(record), flush=True)


def _points(args):
    for model in args.models:
        widths = args.widths or DEFAULT_WIDTHS[model]
        points = {(b, args.base_width or BASE_WIDTH[model]) for b in args.batches}
        points |= {(args.base_batch or BASE_BATCH[model], w) for w in widths}
        for batch, width in sorted(points):
            for mode in ("gs", "plain"):
                yield model, batch, width, mode


def _slope(xs, ys):
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _sweeps(records, model, args):
    """`{"batch": {mode: [(B, record)]}, "width": {mode: [(w, record)]}}` of one family."""
    base_width = args.base_width or BASE_WIDTH[model]
    base_batch = args.base_batch or BASE_BATCH[model]
    rows = [r for r in records if r["model"] == model]
    sweeps = {"batch": {}, "width": {}}
    for mode in ("gs", "plain"):
        sweeps["batch"][mode] = sorted(
            (r["batch"], r) for r in rows if r["mode"] == mode and r["width"] == base_width
        )
        sweeps["width"][mode] = sorted(
            (r["width"], r) for r in rows if r["mode"] == mode and r["batch"] == base_batch
        )
    return sweeps


def growth_sentence(records, model, args):
    s = _sweeps(records, model, args)

    def slope(axis, mode, key):
        points = s[axis][mode]
        return _slope([p for p, _ in points], [r[key] for _, r in points])

    def ratios(axis):
        plain = {p: r for p, r in s[axis]["plain"]}
        return [r["epoch_s"] / plain[p]["epoch_s"] for p, r in s[axis]["gs"] if p in plain]

    r = ratios("batch") + ratios("width")
    batches = [p for p, _ in s["batch"]["gs"]]
    widths = [p for p, _ in s["width"]["gs"]]
    if not batches or not widths or not r:
        return f"{model}: not enough points."
    return (
        f"{model}: with an epoch of {args.epoch_pairs} pairs, GS time per epoch grows as "
        f"B^{slope('batch', 'gs', 'epoch_s'):.2f} over batches {min(batches)}-{max(batches)} "
        f"(plain B^{slope('batch', 'plain', 'epoch_s'):.2f}) and as "
        f"w^{slope('width', 'gs', 'epoch_s'):.2f} over widths {min(widths)}-{max(widths)} "
        f"(plain w^{slope('width', 'plain', 'epoch_s'):.2f}), GS/plain staying within "
        f"{min(r):.2f}-{max(r):.2f}; GS peak memory grows as "
        f"B^{slope('batch', 'gs', 'peak_mb'):.2f} and w^{slope('width', 'gs', 'peak_mb'):.2f} "
        f"(plain B^{slope('batch', 'plain', 'peak_mb'):.2f}, "
        f"w^{slope('width', 'plain', 'peak_mb'):.2f})."
    )


def plot(records, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(args.models), 4, figsize=(16, 3.6 * len(args.models)), squeeze=False
    )
    for row, model in zip(axes, args.models):
        s = _sweeps(records, model, args)
        panels = [
            ("batch", "epoch_s", "time per epoch (s)"),
            ("batch", "peak_mb", "peak memory (MB)"),
            ("width", "epoch_s", "time per epoch (s)"),
            ("width", "peak_mb", "peak memory (MB)"),
        ]
        for ax, (axis, key, label) in zip(row, panels):
            for mode, style in (("gs", "o-"), ("plain", "s--")):
                points = s[axis][mode]
                ax.plot([p for p, _ in points], [r[key] for _, r in points], style, label=mode)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            fixed = (
                f"w={args.base_width or BASE_WIDTH[model]}"
                if axis == "batch"
                else f"B={args.base_batch or BASE_BATCH[model]}"
            )
            ax.set_title(f"{model}, {fixed}")
            ax.set_xlabel("pairs per batch" if axis == "batch" else "width")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"cfkeras GS vs plain step, epoch = {args.epoch_pairs} pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(report, args):
    lines = [
        "# GS vs plain: scaling with batch size and width",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}",
        "",
        *[f"- {s}" for s in report["growth"]],
        "",
        "| model | B (pairs) | width | mode | time / epoch s | CPU s / epoch | first epoch s "
        "| peak MB | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["points"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['width']} | {r['mode']} | {r['epoch_s']:.3f} "
            f"| {r['epoch_cpu_s']:.3f} | {r['first_epoch_s']:.2f} | {r['peak_mb']:.0f} "
            f"| {r['params']} |"
        )
    lines += ["", f"![scaling]({args.name}.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "bow"], choices=list(KINDS))
    parser.add_argument("--batches", nargs="+", type=int, default=DEFAULT_BATCHES)
    parser.add_argument("--widths", nargs="+", type=int, help="default: per family")
    parser.add_argument("--base-batch", type=int, help="batch of the width sweep")
    parser.add_argument("--base-width", type=int, help="width of the batch sweep")
    parser.add_argument("--epoch-pairs", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared", default=str(gs_setup.DEFAULT_SHARED))
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--name", default="gs_scaling")
    parser.add_argument("--point-model", help=argparse.SUPPRESS)
    parser.add_argument("--point-mode", help=argparse.SUPPRESS)
    parser.add_argument("--point-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--point-width", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point_model:
        run_point(args)
        return 0

    records = []
    common_args = ["--epoch-pairs", str(args.epoch_pairs), "--epochs", str(args.epochs)]
    common_args += ["--threads", str(args.threads), "--shared", str(args.shared)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for model, batch, width, mode in _points(args):
        print(f"{model} B={batch} w={width} {mode}", flush=True)
        command = [sys.executable, str(HERE / "gs_scaling.py"), *common_args]
        command += ["--point-model", model, "--point-mode", mode]
        command += ["--point-batch", str(batch), "--point-width", str(width)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        points = [line for line in result.stdout.splitlines() if line.startswith("POINT ")]
        if result.returncode != 0 or not points:
            print(f"  ! failed: {result.stderr.strip().splitlines()[-3:]}", flush=True)
            continue
        records.append(json.loads(points[-1][len("POINT ") :]))
        print(
            f"  {records[-1]['epoch_s']:.3f} s/epoch, {records[-1]['peak_mb']:.0f} MB", flush=True
        )

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores, {args.threads} threads",
        "points": records,
        "growth": [growth_sentence(records, model, args) for model in args.models],
    }
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(records, args, out / f"{args.name}.png")
    text = markdown(report, args)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
