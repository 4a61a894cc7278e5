"""The GS step under mixed precision (`mixed_float16`, `mixed_bfloat16`) against float32.

For each config of `../shared/bench/common.py` and each dtype policy, the same
model and weights (`gs_setup.py`) are built under the policy the Keras way
(`keras.mixed_precision.set_global_policy` before building; variables stay
float32; `compile` wraps the optimizer in a `LossScaleOptimizer` under
`mixed_float16`, whose loss scaling cfkeras's `train_step` applies; cfkeras
computes the cosine in float32). It reports:

* the main and GS losses and `d total / d params` at the initial weights,
  relative to float32 and to the float64 NumPy reference;
* a few `fit` steps: every logged loss finite, the final losses, and the loss
  scale of a `LossScaleOptimizer`;
* with `--time` (an idle machine only), the median ms of the compiled step
  (`tf.function(train_step, jit_compile=True)`, as `gs_step.py`'s "raw").

Usage:

    python benchmarks/gs_precision.py [--cfg M1_B256 M2_B32] [--steps 20] [--time]
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gs_setup  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _finite(value):
    return bool(np.all(np.isfinite(value)))


def evaluate_policy(common, kind, weights, batch, policy, sizes=None, steps=0):
    """Losses, gradients and `steps` fit steps of the GS model under a dtype policy.

    Args:
        common: the shared `common` module.
        kind: model kind ("mlp_small", "mlp_big", "bow").
        weights: `{common name: array}` for the model (`common.make_weights`).
        batch: a common batch (rows `[x_i; x_j]`).
        policy: a Keras dtype policy name.
        sizes: MLP sizes when not the kind's own (a tiny model).
        steps: fit steps to run on the batch after the losses.

    Returns:
        dict with `total`, `main`, `gs`, `gradients` (float32 arrays),
        `compute_dtype`, `optimizer`, and with `steps` the fit history's
        `fit_loss` / `fit_gs_loss` lists and `loss_scale`.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = gs_setup.keras_model(common, kind, sizes=sizes)
        gs_setup.set_common_weights(model, kind, weights)
        gs = gs_setup.gs_model(common, model, kind)
        gs.compile(
            optimizer=gs_setup.make_optimizer(common),
            loss="binary_crossentropy",
            jit_compile=True,
        )
        result = gs_setup.cfkeras_losses_and_gradients(gs, kind, batch)
        result["gradients"] = {k: v.astype(np.float32) for k, v in result["gradients"].items()}
        result["compute_dtype"] = model.layers[-1].compute_dtype
        result["optimizer"] = type(gs.optimizer).__name__
        if steps:
            n_pairs = len(batch["x"]) // 2
            dataset = gs_setup.pairs(batch).to_dataset(batch_size=n_pairs, seed=0).repeat()
            # One step an epoch, so that the history holds every step's loss.
            history = gs.fit(dataset, steps_per_epoch=1, epochs=steps, verbose=0)
            logs = history.history
            result["fit_loss"] = [float(v) for v in logs["loss"]]
            result["fit_gs_loss"] = [float(v) for v in logs["gs_loss"]]
            if isinstance(gs.optimizer, keras.optimizers.LossScaleOptimizer):
                result["loss_scale"] = float(gs.optimizer.dynamic_scale)
        return result
    finally:
        keras.mixed_precision.set_global_policy(previous)


def compare(result, reference):
    """Relative differences of losses and gradients to a reference run.

    Gradients: all parameters as one vector, `|a - b| / |b|` (`grad_rel`) and
    the cosine of the two (`grad_cos`).
    """
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-30)
    names = sorted(reference["gradients"])
    flat = lambda r: np.concatenate([r["gradients"][k].ravel() for k in names]).astype(np.float64)
    a, b = flat(result), flat(reference)
    return {
        "total_rel": rel(result["total"], reference["total"]),
        "main_rel": rel(result["main"], reference["main"]),
        "gs_rel": rel(result["gs"], reference["gs"]),
        "grad_rel": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "grad_cos": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
    }


def time_policy(common, cfg, policy, steps):
    """Median ms of the compiled GS step under a policy."""
    import keras
    import tensorflow as tf

    kind, n_pairs = common.CONFIGS[cfg]
    batch = common.make_batch(kind, n_pairs)
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        gs = gs_setup.build(common, cfg)
        x, y = gs_setup.pair_arrays(batch)
        data = tuple({k: tf.constant(v) for k, v in d.items()} for d in (x, y))
        gs.optimizer.build(gs.trainable_variables)
        step = tf.function(gs.train_step, jit_compile=True)
        sync = lambda logs: logs["loss"].numpy()
        times = common.time_steps(lambda: step(data), steps, 10, sync=sync)
        return common.summarize(times)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", nargs="+", default=["M1_B256", "M2_B32"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--steps", type=int, default=20, help="fit steps per policy")
    parser.add_argument("--time", action="store_true", help="also time the step (idle machine)")
    parser.add_argument("--time-steps", type=int, default=100)
    parser.add_argument("--shared", default=str(gs_setup.DEFAULT_SHARED))
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--name", default="gs_precision")
    args = parser.parse_args(argv)

    # Keras warns that fit's default shuffle=True does not apply to a tf.data.Dataset.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    common = gs_setup.load_common(args.shared)
    rows, report = [], {"command": "python " + " ".join(sys.argv), "results": {}}
    for cfg in args.cfg:
        kind, n_pairs = common.CONFIGS[cfg]
        weights = common.make_weights(kind)
        batch = common.make_batch(kind, n_pairs)
        ref_main, ref_gs = common.numpy_losses(kind, weights, batch)
        results = {}
        for policy in args.policies:
            r = evaluate_policy(common, kind, weights, batch, policy, steps=args.steps)
            entry = {k: v for k, v in r.items() if k != "gradients"}
            entry["gs_vs_numpy_rel"] = abs(r["gs"] - ref_gs) / abs(ref_gs)
            entry["main_vs_numpy_rel"] = abs(r["main"] - ref_main) / abs(ref_main)
            entry["finite"] = _finite([r["total"], *r.get("fit_loss", [])])
            if "float32" in results:
                entry["vs_float32"] = compare(r, results["float32"]["_raw"])
            if args.time:
                entry["step"] = time_policy(common, cfg, policy, args.time_steps)
            entry["_raw"] = r
            results[policy] = entry
            rows.append((cfg, policy, entry))
        report["results"][cfg] = {
            p: {k: v for k, v in e.items() if k != "_raw"} for p, e in results.items()
        }
    lines = [
        f"Command: `{report['command']}`",
        "",
        "| cfg | policy | compute dtype | optimizer | GS loss "
        "| vs float32: total / GS / grads (cos) "
        "| GS vs NumPy | finite | fit loss first -> last | loss scale | step ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg, policy, e in rows:
        vs = e.get("vs_float32")
        vs = (
            "-"
            if vs is None
            else (
                f"{vs['total_rel']:.1e} / {vs['gs_rel']:.1e} / {vs['grad_rel']:.1e} "
                f"({vs['grad_cos']:.5f})"
            )
        )
        fit = e.get("fit_loss") or []
        fit = f"{fit[0]:.4f} -> {fit[-1]:.4f}" if fit else "-"
        step = "-" if "step" not in e else f"{e['step']['median_ms']:.2f}"
        lines.append(
            f"| {cfg} | {policy} | {e['compute_dtype']} | {e['optimizer']} | {e['gs']:.6f} | {vs} "
            f"| {e['gs_vs_numpy_rel']:.1e} | {e['finite']} | {fit} "
            f"| {e.get('loss_scale', '-')} | {step} |"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{args.name}.md").write_text(text + "\n")
    return 0 if all(e["finite"] for _, _, e in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
