r"""GS vs augmentation on all-MiniLM-L6-v2, with the CAD pairs: frozen or fine-tuned.

Two rows on the *same pair batches*, from the same initial weights and seeds:

- `control`: augmentation, `GradientSupervisionModel(model, gs_weight=0)`:
  both members of every pair in the main loss, no GS term.
- `gs`: the same with the GS term in the pooled space, `gs_weight = λ`.

Three modes (`--mode`), one classifier: the masked mean of MiniLM's last
hidden states (the pooling it was trained with) -> a tanh MLP head
(384 -> 384 -> classes, dropout 0.1), GS in the pooled space:

- `frozen` (default): every text embedded once (`encoders.pooled_embeddings`,
  kept in `--cache-dir`); only the head (`encoders.pooled_head`) is trained,
  with Adam. Results: `gs_encoder_frozen_<dataset>`.
- `upper`: the embeddings and the layers below `--start-layer` (4 of 6) are
  frozen and run once (`encoders.cached_hidden_states`, float16, kept in
  `--cache-dir` by content); `encoders.encoder_classifier(backbone,
  start_layer=4)` trains layers 4-5 and the head from the cached states,
  `GradientSupervisionModel(model, gs_layer="pooled")`.
- `full`: every layer fine-tuned from the token ids (the preprocessor's
  dict), the same GS model.

In the fine-tuned modes the GS term is `1 - cos(g_i, h_j - h_i)` at the
pooled points `h` of the two texts (lengths may differ: each is its own
masked mean); its input gradient `g_i` is a backward pass through the head,
differentiated again (second order through the head), and the term's
gradient then reaches the fine-tuned layers through `h_i` and `h_j`. The
optimizer is AdamW (weight decay 0.01), as in `examples/cat_few_shot.py`.
A pair batch is `cfkeras.Pairs.to_dataset` over dict members (`{"hidden_states",
"padding_mask"}` or `{"token_ids", "segment_ids", "padding_mask"}`): pairs are
drawn by index, so an original never leaves its counterfactual.

Dropout, in every mode: the GS term takes its input gradient with the model
in training mode (dropout on: the head's, and in the fine-tuned modes the
trained transformer layers'), in the very forward pass whose logits give the
main loss, as `GradientSupervisionModel` documents; the control (λ = 0) runs
the same pass, so both rows draw the same dropout masks. Cached lower layers
ran once in inference mode (no dropout).

The learning rate (both rows) and λ (GS) are chosen on validation (the CAD
dev pairs, originals and edits) from the grids `--learning-rates` and
`--gs-weights`, by the mean over seeds; the weights of the best validation
epoch are evaluated. `--pairs all` trains on every CAD training pair, `--pairs
100` on 100 pairs drawn per seed (the small-pairs setting). SNLI pairs each
original with its four edits; the main loss weights members so that every
unique example counts once (originals 0.4, edits 1.6, mean 1), in both rows.
(The fine-tuned modes validate SNLI on every dev text once, unweighted: the
same accuracy and loss as the weighted pairs, on 5/8 of the rows.)

Reported: accuracy per column, mean ± std over seeds, and the paired
difference GS − control by seed (mean ± standard error, paired t-test,
Holm-corrected over the primary columns: test edited and the OOD sets for
IMDb, the revised test sets for SNLI). Every finished run is kept in
`<out>/<stem>.partial.json`; the same command resumes from it, and with
`--replot` recomputes the summary and Markdown of the finished report from
its runs (no training). Stems: `gs_encoder_<mode>_<dataset>[_<tag>]`.

Budget of the fine-tuned modes (measured; every command <= 2 h on one core).
Measured with two short runs of

    taskset -c 1 python examples/gs_encoder.py --mode upper --dataset imdb --pairs 100 \
        --seeds 0 1 --epochs 2 --length 128 --learning-rates 1e-4 --gs-weights 1 \
        --ood-dir ../shared/data/ood --out /tmp/measure --verbose 2

(`--seeds 0`, then `--seeds 0 1`; each run records `step_seconds`, the
median step after the first, `first_step_seconds` and `train_seconds`)
on core 1 shared with another training job (load average ~3 on 2 cores):
caching 6,380 IMDb texts (train, dev, test, 3 x 500 OOD) through layers 0-3
at 128 tokens took 150 s (once); a training step of 8 pairs (16 texts) x 128
tokens took 0.37-1.01 s (median of a run; control 0.73, 1.01, 0.67 s; GS
0.37, 0.62, 0.52 s: the GS term adds only a second-order pass through the
head, lost in the noise of the shared core); the first step (XLA compile)
10-20 s; validation on the 490 dev texts ~16 s an epoch; evaluating the 2,476
test and OOD texts ~40 s; a whole run of 2 epochs on 100 pairs 100-110 s.
`full`, the same command with `--mode full --seeds 0 --epochs 1
--learning-rates 5e-5`: a step 1.50 s (control) and 1.98 s (GS), the first
step 24 s and 41 s, an epoch's validation ~40 s, a run's model loading and
evaluation ~145 s.
Hence the defaults (`upper`: 8 epochs, learning rates {1e-4, 3e-5}, λ {1};
`full`: 6 epochs, learning rate {5e-5}, λ {1}; both: 8 pairs a batch, 100
pairs, IMDb 128 tokens and SNLI 80): λ = 1 is the value the frozen mode chose
on both datasets over 10. 87 % of the IMDb training reviews are longer than
128 tokens (median 199): the fine-tuned modes read their first 128 (the
frozen mode 256). The longest SNLI CAD input (premise and hypothesis packed)
is 78 MiniLM tokens: 80 cuts nothing.
Estimates, on such a shared core:

| command | runs | estimate |
|---|---|---|
| upper, IMDb, 100 pairs (defaults) | 20 | 90 min |
| upper, SNLI, 100 pairs (defaults) | 20 | 85 min (+3 min caching) |
| upper, IMDb, all 1,707 pairs, 4 epochs, one rate | 10 | 77 min (measured) |
| upper, SNLI, all 6,664 pairs, 6 epochs, one rate | 10 | 3.5 h (from measured runs): two commands |
| full, IMDb, 100 pairs (defaults) | 10 | 90 min |
| full, SNLI, 100 pairs (defaults) | 10 | 85 min |

Usage (IMDb's OOD sets from `--ood-dir`; `<rate>`: the learning rate the
100-pair run of the same mode and dataset chose, in its report):

  python examples/gs_encoder.py --dataset imdb --pairs all 100 --seeds 0 1 2 3 4 \
      --ood-dir ../shared/data/ood
  python examples/gs_encoder.py --mode upper --dataset imdb --ood-dir ../shared/data/ood
  python examples/gs_encoder.py --mode upper --dataset snli
  python examples/gs_encoder.py --mode upper --dataset imdb --pairs all --epochs 4 \
      --learning-rates <rate> --tag all --ood-dir ../shared/data/ood
  python examples/gs_encoder.py --mode full --dataset imdb --ood-dir ../shared/data/ood
  python examples/gs_encoder.py --mode full --dataset snli

The measured rows ran beside another job. SNLI with all pairs: 833 steps
of 8 pairs an epoch at about 0.2 s, about 20 min a run at 6 epochs (at 3
epochs validation was still rising: 57.5, 60.5, 60.7 %), so two commands of
~2 h and ~1.4 h (the second adds seeds 3-4 to the first's finished report,
`--extend`); an interrupted one resumes with the same command:

  python examples/gs_encoder.py --mode upper --dataset snli --pairs all --epochs 6 \
      --learning-rates <rate> --tag all_epochs6 --seeds 0 1 2
  python examples/gs_encoder.py --mode upper --dataset snli --pairs all --epochs 6 \
      --learning-rates <rate> --tag all_epochs6 --seeds 3 4 --extend

At 6 epochs the GS row is not converged (best epochs 5, 6, 6, 5, 6; the
control's 5, 5, 5, 6, 5): the next run is `--epochs 9 --tag all_epochs9`
(results/README.md, "the next runs").

With 100 SNLI pairs the defaults' 8 epochs are too few: at 1e-4 the
control passed our convergence rule at 16 epochs, GS at 24, both at 32
(`--epochs 32`; results/README.md, "GS vs augmentation, MiniLM
fine-tuned"). The `full` mode's defaults (6 epochs, 5e-5) are too short
by the same evidence: at 1e-4 and 24 epochs on 100 SNLI pairs its best
epochs were 22 and 11 (control) and 18 and 18 (GS) for seeds 0-1, a run
17-29 min of training on a host about twice as slow as the one measured
above. Until its runs finish, run it with `--epochs 24 --learning-rates
1e-4 --tag epochs24` (SNLI) or `--epochs 12 --learning-rates 1e-4 --tag
epochs12` (IMDb), as in results/README.md, "the next runs".
"""

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import cfkeras
from cfkeras import encoders
from cfkeras.reproductions.harness import (
    add_nested_arguments,
    command_lines,
    machine_description,
    rewrite_nested,
    run_nested,
)
from cfkeras.reproductions.statistics import difference_text, paired_differences, scores_by_column

ROWS = ("control", "gs")
COLUMNS = {
    "imdb": ("validation", "test_original", "test_edited", "amazon", "twitter", "yelp"),
    "snli": ("validation", "test_original", "test_revised_premise", "test_revised_hypothesis"),
}
PRIMARY = {
    "imdb": ("test_edited", "amazon", "twitter", "yelp"),
    "snli": ("test_revised_premise", "test_revised_hypothesis"),
}
NUM_CLASSES = {"imdb": 2, "snli": 3}
MODES = ("frozen", "upper", "full")
TITLES = {
    "frozen": "frozen all-MiniLM-L6-v2 embeddings",
    "upper": "all-MiniLM-L6-v2 fine-tuned above cached lower layers",
    "full": "all-MiniLM-L6-v2 fully fine-tuned",
}
# Defaults by mode (the budget in the module docstring): epochs, learning
# rates, λ, pairs per batch, training pairs; tokens by dataset.
DEFAULTS = {
    "frozen": (60, [1e-3, 3e-4], [1.0, 10.0], 32, ["all", "100"]),
    "upper": (8, [1e-4, 3e-5], [1.0], 8, ["100"]),
    "full": (6, [5e-5], [1.0], 8, ["100"]),
}
LENGTHS = {
    "frozen": {"imdb": 256, "snli": 128},
    "upper": {"imdb": 128, "snli": 80},
    "full": {"imdb": 128, "snli": 80},
}


# === Data: every text encoded once ===


def load_encoder(length):
    """`(backbone, preprocessor)`: all-MiniLM-L6-v2 at `length` tokens (read
    offline by `encoders.load_minilm`; the tests put a tiny BERT here)."""
    return encoders.load_minilm(sequence_length=length)


def _digest(*parts):
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def embed_all(args, texts):
    """Pooled MiniLM vectors of `texts` (str, or (premise, hypothesis) rows),
    cached on disk by content (`--mode frozen`)."""
    path = Path(args.cache_dir, f"pooled_{_digest(args.length, texts.tolist())}.npy")
    if path.is_file():
        return np.load(path)
    backbone, preprocessor = load_encoder(args.length)
    t0 = time.perf_counter()
    vectors = encoders.pooled_embeddings(
        backbone, encoders.tokenize(preprocessor, texts), batch_size=16
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    return vectors


def hidden_all(args, texts, encoder):
    """`{"hidden_states", "padding_mask"}` after MiniLM's first
    `--start-layer` layers (float16), cached on disk by content (`--mode
    upper`). `encoder()` gives `(backbone, preprocessor)`."""
    digest = _digest("upper", args.length, args.start_layer, texts.tolist())
    path = Path(args.cache_dir, f"hidden_{digest}.npz")
    if path.is_file():
        with np.load(path) as stored:
            return dict(stored)
    backbone, preprocessor = encoder()
    t0 = time.perf_counter()
    states = encoders.cached_hidden_states(
        backbone,
        encoders.tokenize(preprocessor, texts),
        args.start_layer,
        batch_size=16,
        dtype="float16",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **states)
    print(f"cached {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    return states


def encoding(args):
    """The function from texts (`(n,)` or `(n, 2)`) to the model's inputs
    (`n` rows) of `args.mode`: pooled vectors, cached hidden states, or the
    preprocessor's token ids."""
    if args.mode == "frozen":
        return functools.partial(embed_all, args)
    encoder = functools.cache(lambda: load_encoder(args.length))
    if args.mode == "upper":
        return lambda texts: hidden_all(args, texts, encoder)
    return lambda texts: encoders.tokenize(encoder()[1], texts)


def load_texts(args):
    """The CAD texts: `{"imdb": ..., "snli": ...}[args.dataset]`, as
    `{split: ...}`: IMDb `(originals, edits, labels, edit labels,
    group ids)` per CAD split and `(texts, labels)` per OOD set; SNLI the
    `SnliGroups` per CAD split."""
    if args.dataset == "imdb":
        texts = {}
        for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
            p = cfkeras.datasets.load_imdb_pairs(name, data_dir=args.data_dir)
            texts[split] = (p.text, p.text_counterfactual, p.label, p.label_counterfactual)
            texts[split] += (p.group_id,)
        ood_dir = args.ood_dir or os.environ.get("CFKERAS_OOD_DIR")
        for name in ("amazon", "twitter", "yelp"):
            ood, labels = cfkeras.datasets.load_ood_sentiment(name, ood_dir)
            keep = np.random.default_rng(0).permutation(len(ood))[: args.ood_size]
            texts[name] = (ood[keep], labels[keep])
        return texts
    return {
        split: cfkeras.datasets.load_snli_groups(name, data_dir=args.data_dir)
        for split, name in (("train", "train"), ("validation", "dev"), ("test", "test"))
    }


def take(x, index):
    """Rows `index` of an array or a dict of arrays (the model's inputs)."""
    return keras.tree.map_structure(lambda a: a[index], x)


def load(args, texts, encode):
    """`(pairs, evaluation)`: `{split: Pairs}` for train and validation, and
    `{column: (inputs, labels)}` for the test columns, the texts of
    `load_texts` encoded by `encode` (`encoding(args)`)."""
    pairs, evaluation = {}, {}
    if args.dataset == "imdb":
        for split in ("train", "validation", "test"):
            text, text_cf, label, label_cf, group_id = texts[split]
            both = encode(np.concatenate([text, text_cf]))
            n = len(text)
            original, edited = take(both, slice(None, n)), take(both, slice(n, None))
            if split == "test":
                evaluation["test_original"] = (original, label)
                evaluation["test_edited"] = (edited, label_cf)
            else:
                pairs[split] = cfkeras.Pairs(original, edited, label, label_cf, group_id=group_id)
        for name in ("amazon", "twitter", "yelp"):
            ood, labels = texts[name]
            evaluation[name] = (encode(ood), labels)
        return pairs, evaluation
    for split in ("train", "validation", "test"):
        g = texts[split]
        originals = encode(np.stack([g.premise, g.hypothesis], 1))
        # The four edits of group k are rows 4k .. 4k + 3.
        edits = encode(np.stack([g.edit_premise.reshape(-1), g.edit_hypothesis.reshape(-1)], 1))
        if split == "test":
            evaluation["test_original"] = (originals, g.label)
            for changed in ("premise", "hypothesis"):
                keep = (g.edit_changed == changed).reshape(-1)
                evaluation[f"test_revised_{changed}"] = (
                    take(edits, keep),
                    g.edit_label.reshape(-1)[keep],
                )
            continue
        if split == "validation" and args.mode != "frozen":
            # Every text once: the accuracy and loss of the weighted pairs
            # below flattened (an original's 4 copies weigh 4 x 0.4 = 1.6, an
            # edit's weight), on 5/8 of their rows.
            pairs["validation_rows"] = (
                keras.tree.map_structure(lambda a, b: np.concatenate([a, b]), originals, edits),
                np.concatenate([g.label, g.edit_label.reshape(-1)]),
            )
        group = np.repeat(np.arange(len(g)), 4)
        # Originals sit in four pairs, edits in one: 1/4 and 1, scaled to mean 1.
        weights = {
            "original": np.full(4 * len(g), 0.4, "float32"),
            "counterfactual": np.full(4 * len(g), 1.6, "float32"),
        }
        pairs[split] = cfkeras.Pairs(
            take(originals, group),
            edits,
            g.label[group],
            g.edit_label.reshape(-1),
            sample_weight=weights,
            group_id=group,
        )
    return pairs, evaluation


def subset(pairs, k, seed):
    """`k` pairs drawn with `seed` (SNLI: whole groups, 4 pairs each)."""
    groups = np.unique(pairs.group_id)
    per_group = len(pairs) // len(groups)
    chosen = np.random.default_rng(seed).choice(groups, k // per_group, replace=False)
    index = np.flatnonzero(np.isin(pairs.group_id, chosen))
    pick = lambda v: None if v is None else take(v, index)  # noqa: E731
    return cfkeras.Pairs(
        pick(pairs.original),
        pick(pairs.counterfactual),
        pick(pairs.label),
        pick(pairs.counterfactual_label),
        sample_weight=pick(pairs.sample_weight),
        group_id=pairs.group_id[index],
    )


# === One run ===


class StepTimes(keras.callbacks.Callback):
    """Wall seconds of every training step (`steps`: one list an epoch)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = getattr(self, "steps", []) + [[]]
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.steps[-1].append(now - self._last)
        self._last = now


def build(args):
    """`(model, gs_layer)` of `args.mode`, fresh: the head on
    pooled vectors (frozen), or MiniLM's layers from `--start-layer` (upper)
    or from the token ids (full) under the same head."""
    num_classes = NUM_CLASSES[args.dataset]
    if args.mode == "frozen":
        return encoders.pooled_head(384, num_classes=num_classes), None
    backbone, _ = load_encoder(args.length)
    start_layer = args.start_layer if args.mode == "upper" else 0
    model = encoders.encoder_classifier(backbone, num_classes, start_layer=start_layer)
    return model, encoders.GS_LAYER


def optimizer(args, lr):
    """Adam for the frozen head (as committed); AdamW (weight decay 0.01, as
    `examples/cat_few_shot.py`) when MiniLM's layers are fine-tuned."""
    if args.mode == "frozen":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.AdamW(lr, weight_decay=0.01)


def run_one(args, pairs, evaluation, size, seed, lr, gs_weight):
    keras.utils.set_random_seed(seed)
    train = pairs["train"] if size == "all" else subset(pairs["train"], int(size), seed)
    model, gs_layer = build(args)
    gs = cfkeras.GradientSupervisionModel(model, gs_layer=gs_layer, gs_weight=gs_weight)
    gs.compile(
        optimizer=optimizer(args, lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    batch = min(args.batch_size, len(train))
    eval_batch = 256 if args.mode == "frozen" else 64
    best = cfkeras.selection.BestEpochWeights(monitor="val_accuracy")
    times = StepTimes()
    t0 = time.perf_counter()
    if "validation_rows" in pairs:
        validation = tf.data.Dataset.from_tensor_slices(pairs["validation_rows"]).batch(eval_batch)
    else:
        validation = pairs["validation"].flatten(batch_size=eval_batch, shuffle=False)
    history = gs.fit(
        train.to_dataset(batch_size=batch, seed=seed),
        validation_data=validation,
        epochs=args.epochs,
        callbacks=[best, times],
        verbose=args.verbose,
    ).history
    seconds = time.perf_counter() - t0
    scores = {"validation": max(history["val_accuracy"])}
    for column, (x, y) in evaluation.items():
        logits = model.predict(x, batch_size=512 if args.mode == "frozen" else 64, verbose=0)
        scores[column] = float(np.mean(np.argmax(logits, -1) == y))
    result = {
        "scores": scores,
        "best_epoch": int(np.argmax(history["val_accuracy"])) + 1,
        "val_accuracy": [round(float(v), 4) for v in history["val_accuracy"]],
        "train_pairs": len(train),
    }
    # The first step of a run compiles; the first of each later epoch waits
    # for validation's data.
    steady = [t for epoch in times.steps for t in epoch[1:]]
    result["train_seconds"] = round(seconds, 1)
    result["first_step_seconds"] = round(times.steps[0][0], 2)
    if steady:
        result["step_seconds"] = round(float(np.median(steady)), 3)
    return result


# === Report ===


def key(lr, gs_weight):
    return f"lr={lr:g},gs={gs_weight:g}"


def summarize(runs, dataset):
    """Per size: the setting of each row with the best mean validation
    accuracy over the size's seeds, its columns, and GS − control by seed.

    The seeds are read from the runs, not from the last command's `--seeds`:
    a report extended by a second command (`--extend --seeds 3 4`) holds the
    seeds of both. They are those that every row has run (in some setting),
    so that a cut report summarizes the seeds both rows share."""
    summary = {}
    for size, by_row in runs.items():
        seeds = sorted(
            set.intersection(*(set().union(*map(set, r.values())) for r in by_row.values())),
            key=int,
        )
        chosen = {}
        for row, by_setting in by_row.items():
            complete = {s: r for s, r in by_setting.items() if all(k in r for k in seeds)}
            if complete:
                mean_val = {
                    s: np.mean([r[k]["scores"]["validation"] for k in seeds])
                    for s, r in complete.items()
                }
                chosen[row] = max(mean_val, key=mean_val.get)
        cells = {}
        for row, setting in chosen.items():
            runs_row = by_row[row][setting]
            cells[row] = {
                "setting": setting,
                "best_epochs": [runs_row[k]["best_epoch"] for k in seeds],
                "seeds": [int(k) for k in seeds],
            }
            for column in COLUMNS[dataset]:
                values = np.array([100 * runs_row[k]["scores"][column] for k in seeds])
                cells[row][column] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                }
        if len(chosen) == 2 and len(seeds) > 1:
            gs, control = (by_row[r][chosen[r]] for r in ("gs", "control"))
            gs, control = ({k: row[k] for k in seeds} for row in (gs, control))
            cells["difference"] = paired_differences(
                scores_by_column(gs, COLUMNS[dataset]),
                scores_by_column(control, COLUMNS[dataset]),
                primary=PRIMARY[dataset],
            )
        summary[size] = cells
    return summary


def render(report):
    dataset = report["args"]["dataset"]
    columns = COLUMNS[dataset]
    title = TITLES[report["args"].get("mode", "frozen")]
    lines = [
        f"# GS vs augmentation on {title}, {dataset.upper()} CAD pairs",
        "",
        *command_lines(report),
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min "
        "(this invocation).",
        "",
        "Accuracy %, mean ± std over the seeds each section names; the control is "
        "augmentation on the same pair batches "
        "(λ = 0); settings chosen on validation. Difference: GS − control by seed, mean ± "
        "standard error, paired t-test p, its Holm correction over the primary columns "
        f"{', '.join(PRIMARY[dataset])}; `*`: significant at 5 % (after Holm for a primary "
        "column).",
        "",
    ]
    for size, cells in report["summary"].items():
        seeds = next((c["seeds"] for c in cells.values() if "seeds" in c), [])
        lines += [
            f"## {size} training pairs (seeds {', '.join(map(str, seeds))})",
            "",
            "| row | setting | " + " | ".join(columns) + " | best epochs |",
            "|---|---|" + "---|" * (len(columns) + 1),
        ]
        for row in ROWS:
            if row not in cells:
                continue
            c = cells[row]
            values = " | ".join(f"{c[col]['mean']:.1f} ± {c[col]['std']:.1f}" for col in columns)
            lines.append(
                f"| {row} | {c['setting']} | {values} | {', '.join(map(str, c['best_epochs']))} |"
            )
        if "difference" in cells:
            d = cells["difference"]
            text = " | ".join(difference_text(d[col]) for col in columns)
            lines.append(f"| GS − control | | {text} | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("imdb", "snli"), default="imdb")
    parser.add_argument("--mode", choices=MODES, default="frozen")
    parser.add_argument("--pairs", nargs="+", default=None, help="default: by mode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--learning-rates", type=float, nargs="+", default=None, help="default: by mode"
    )
    parser.add_argument(
        "--gs-weights", type=float, nargs="+", default=None, help="default: by mode"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: by mode")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per batch")
    parser.add_argument(
        "--length", type=int, default=None, help="tokens (default: by mode and dataset)"
    )
    parser.add_argument(
        "--start-layer", type=int, default=4, help="upper: first fine-tuned layer (of 6)"
    )
    parser.add_argument("--ood-size", type=int, default=500)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ood-dir", default=None)
    parser.add_argument(
        "--cache-dir",
        default=os.path.expanduser("~/.cache/cfkeras/frozen"),
        help="pooled vectors (frozen) and hidden states (upper), by content",
    )
    add_nested_arguments(parser)
    args = parser.parse_args(argv)
    stem = f"gs_encoder_{args.mode}_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    if args.replot:
        rewrite_nested(
            args.out,
            stem,
            lambda r: {**r, "summary": summarize(r["runs"], args.dataset)},
            render,
        )
        return
    epochs, learning_rates, gs_weights, batch_size, sizes = DEFAULTS[args.mode]
    args.epochs = args.epochs or epochs
    args.learning_rates = args.learning_rates or learning_rates
    args.gs_weights = args.gs_weights or gs_weights
    args.batch_size = args.batch_size or batch_size
    args.pairs = args.pairs or sizes
    args.length = args.length or LENGTHS[args.mode][args.dataset]
    command = "python examples/gs_encoder.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    pairs, evaluation = load(args, load_texts(args), encoding(args))

    def report(runs):
        return {
            "command": command,
            "machine": machine_description(),
            "args": vars(args),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "runs": runs,
            "summary": summarize(runs, args.dataset),
        }

    settings = [("control", lr, 0.0) for lr in args.learning_rates]
    settings += [("gs", lr, w) for lr in args.learning_rates for w in args.gs_weights]
    grid = [
        (
            (size, row, key(lr, w), str(seed)),
            f"{size} pairs, {row} {key(lr, w)}, seed {seed}",
            functools.partial(run_one, args, pairs, evaluation, size, seed, lr, w),
        )
        for size in args.pairs
        for seed in args.seeds
        for row, lr, w in settings
    ]
    run_nested(args.out, stem, grid, report, render, extend=args.extend)


if __name__ == "__main__":
    main()
