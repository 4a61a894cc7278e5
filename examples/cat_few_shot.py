"""CAT's few-shot setting on our data: ERM vs CAT* vs CAT on all-MiniLM-L6-v2.

Wang et al. (Findings of EMNLP 2021), Table 2's setting on the CAD
originals: `k` training examples per class sampled from the CAD training
originals (IMDb: 1,707; SNLI: 500), a MiniLM classifier
(`cfkeras.encoders.encoder_classifier`, mean pooling, two-layer tanh head),
batch 8 (the last partial batch of an epoch dropped: reshuffled every epoch,
every example is used), 30 epochs below 50 examples per class and 20
otherwise (A.4), and
the three methods on the same batches from the same initial weights:

- `erm`: the warm-up epoch and every later epoch plain ERM. It is
  `CounterfactualAdversarialModel` with `warmup_epochs=epochs` (same data
  order, same draws), so that the methods differ by CAT's updates alone.
- `cat_star`: CMIX with λ ~ Beta(0.3, 0.3) (no CAL), CRM then ERM a batch.
- `cat`: CMIX + CAL + CRM.

`--mode cached` (default) freezes the embeddings and the layers below
min(Q) = 4 and computes their outputs once for every split
(`cfkeras.encoders.cached_hidden_states`, kept in `--cache-dir`); the
methods then train layers 4-5 and the head. `--mode full` fine-tunes every
layer as the paper does. Validation: the CAD dev originals after every
epoch; the weights of the best validation epoch are evaluated on the test
splits (IMDb: CAD test originals and edits, and a fixed subset of each OOD
set: the first `--ood-size` examples of a permutation with seed 0; SNLI: CAD
test originals, revised premises, revised hypotheses). The learning rate of
every method is chosen on validation from the same grid (`--learning-rates`;
CRM's learning rate equals ERM's, as the paper's 2e-5 does its 1e-5 / 2e-5):
the whole grid runs on the tuning seeds (`--tune-seeds`, by default the first
two of `--seeds`), each method takes the rate of best mean validation
accuracy over them, and the other seeds run at that rate only.

Every finished run is kept in `<out>/<stem>.partial.json`; running the same
command again resumes from it. `--extend` adds a command's runs to the
finished report instead of starting it again: a larger size per class, at
its own rates, joins the same report (as A.4 tunes the rate below 50
examples per class and fixes it from 50 on). The same command with `--replot` recomputes
the summary and Markdown of the finished `<stem>.json` from its runs (no
training). CAT* − ERM and CAT − ERM are paired by seed
(`cfkeras.reproductions.statistics.paired_differences`: mean ± standard
error, paired t-test, Holm over every test column).

Usage:
  python examples/cat_few_shot.py --dataset imdb --per-class 10 50 --seeds 0 1 2 3 4
  # 50 per class at one rate, added to a finished 10-per-class report:
  python examples/cat_few_shot.py --dataset snli --per-class 50 --learning-rates 6e-5 --extend
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
from cfkeras.models.counterfactual_adversarial import default_mix_layers
from cfkeras.reproductions.harness import (
    add_nested_arguments,
    command_lines,
    machine_description,
    rewrite_nested,
    run_nested,
)
from cfkeras.reproductions.statistics import difference_text, paired_differences, scores_by_column

METHODS = ("erm", "cat_star", "cat")
LABELS = {"erm": "ERM", "cat_star": "CAT* (no CAL)", "cat": "CAT"}
COLUMNS = {
    "imdb": ("validation", "test_original", "test_edited", "amazon", "twitter", "yelp"),
    "snli": (
        "validation",
        "test_original",
        "test_revised_premise",
        "test_revised_hypothesis",
    ),
}
# The Holm family of CAT* − ERM and CAT − ERM: every test column (the paper
# claims better accuracy, not only on edits).
PRIMARY = {dataset: columns[1:] for dataset, columns in COLUMNS.items()}
NUM_CLASSES = {"imdb": 2, "snli": 3}
# Table 2 of the paper (BERT-base; examples from the full IMDb / SNLI; a
# random test set of 2,000): per class -> (ERM, CAT*, CAT).
PAPER = {
    "imdb": {
        10: (73.28, 73.77, 75.55),
        50: (78.03, 78.98, 80.13),
        250: (82.38, 82.45, 83.15),
    },
    "snli": {
        10: (42.68, 44.37, 46.23),
        50: (57.62, 59.42, 60.27),
        250: (70.17, 71.23, 72.13),
    },
}


# === Data ===


def load_texts(args):
    """`{split: (texts, labels)}`: texts are str (IMDb) or (premise,
    hypothesis) pairs (SNLI)."""
    data_dir = args.data_dir
    if args.dataset == "imdb":
        ood_dir = args.ood_dir or os.environ.get("CFKERAS_OOD_DIR")
        splits = {}
        for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
            pairs = cfkeras.datasets.load_imdb_pairs(name, data_dir=data_dir)
            if split == "test":
                splits["test_original"] = (pairs.text, pairs.label)
                splits["test_edited"] = (pairs.text_counterfactual, pairs.label_counterfactual)
            else:
                splits[split] = (pairs.text, pairs.label)
        for name in ("amazon", "twitter", "yelp"):
            texts, labels = cfkeras.datasets.load_ood_sentiment(name, ood_dir)
            keep = np.random.default_rng(0).permutation(len(texts))[: args.ood_size]
            splits[name] = (texts[keep], labels[keep])
        return splits
    splits = {}
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        groups = cfkeras.datasets.load_snli_groups(name, data_dir=data_dir)
        originals = (np.stack([groups.premise, groups.hypothesis], 1), groups.label)
        if split != "test":
            splits[split] = originals
            continue
        splits["test_original"] = originals
        for changed in ("premise", "hypothesis"):
            keep = groups.edit_changed == changed
            texts = np.stack([groups.edit_premise[keep], groups.edit_hypothesis[keep]], 1)
            splits[f"test_revised_{changed}"] = (texts, groups.edit_label[keep])
    return splits


def model_inputs(args, splits, start_layer):
    """`{split: (x, y)}` the model reads: token ids, or cached hidden states."""
    backbone, preprocessor = encoders.load_minilm(sequence_length=args.length)
    inputs = {}
    for split, (texts, labels) in splits.items():
        x = encoders.tokenize(preprocessor, texts)
        if start_layer:
            digest = hashlib.sha256(
                json.dumps([args.dataset, args.length, start_layer, split, texts.tolist()]).encode()
            ).hexdigest()[:16]
            path = Path(args.cache_dir, f"{args.dataset}_{split}_{digest}.npz")
            if path.is_file():
                x = dict(np.load(path))
            else:
                t0 = time.perf_counter()
                x = encoders.cached_hidden_states(backbone, x, start_layer, dtype="float16")
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **x)
                print(f"cached {split}: {len(texts)} texts in {time.perf_counter() - t0:.0f} s")
        inputs[split] = (x, np.asarray(labels, "int32"))
    return inputs


def few_shot(y, per_class, seed):
    """Indices of `per_class` examples of every class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)]
    return rng.permutation(np.concatenate(picks))


def take(x, index):
    return {key: value[index] for key, value in x.items()}


# === One run ===


def run_one(args, inputs, method, per_class, seed, learning_rate, start_layer):
    keras.utils.set_random_seed(seed)
    backbone, _ = encoders.load_minilm(sequence_length=args.length)
    model = encoders.encoder_classifier(
        backbone, num_classes=NUM_CLASSES[args.dataset], start_layer=start_layer
    )
    epochs = args.epochs or (30 if per_class < 50 else 20)
    cat = cfkeras.models.CounterfactualAdversarialModel(
        model,
        use_cal=method == "cat",
        warmup_epochs=epochs if method == "erm" else 1,
        crm_learning_rate=learning_rate,
        seed=seed,
    )
    cat.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    x_train, y_train = inputs["train"]
    index = few_shot(y_train, per_class, seed)
    train = (
        tf.data.Dataset.from_tensor_slices((take(x_train, index), y_train[index]))
        .shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
        .batch(args.batch_size, drop_remainder=True)  # one XLA program, no retrace
    )
    best = cfkeras.selection.BestEpochWeights(monitor="val_accuracy")
    t0 = time.perf_counter()
    history = cat.fit(
        train,
        validation_data=inputs["validation"],
        epochs=epochs,
        validation_batch_size=64,
        callbacks=[best],
        verbose=args.verbose,
    ).history
    seconds = time.perf_counter() - t0
    scores = {}
    for split in COLUMNS[args.dataset]:
        x, y = inputs[split]
        logits = cat.model.predict(x, batch_size=64, verbose=0)
        scores[split] = float(np.mean(np.argmax(logits, -1) == y))
    val = history["val_accuracy"]
    result = {
        "scores": scores,
        "best_epoch": int(np.argmax(val)) + 1,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "val_accuracy": [round(float(v), 4) for v in val],
        "val_loss": [round(float(v), 4) for v in history["val_loss"]],
    }
    for key in ("crm_loss", "cat_lambda", "crm_weight", "counterfactual_flip_rate"):
        if key in history:
            result[key] = round(float(history[key][-1]), 4)
    return result


# === Report ===


def choose_learning_rate(by_lr, seeds=None):
    """The key of `by_lr` (`{lr: {seed: run}}`) of best mean validation
    accuracy, over the seeds every rate has run (restricted to `seeds` when
    given), so that a rate run on more seeds is not favoured or penalised by
    them; ties keep the first rate. None when nothing has run."""
    by_lr = {lr: by_seed for lr, by_seed in by_lr.items() if by_seed}
    if not by_lr:
        return None
    shared = set.intersection(*(set(by_seed) for by_seed in by_lr.values()))
    if seeds is not None:
        shared &= {str(s) for s in seeds}
    means = {
        lr: np.mean(
            [r["scores"]["validation"] for s, r in by_seed.items() if not shared or s in shared]
        )
        for lr, by_seed in by_lr.items()
    }
    return max(means, key=means.get)


def summarize(runs, dataset):
    """Per (per_class, method): the learning rate with the best mean validation
    accuracy (`choose_learning_rate`), and mean and std of every column at
    that rate; for CAT* and CAT, the paired difference to ERM at ERM's rate
    on the seeds both hold (`statistics.paired_differences`: mean, standard
    error, paired t-test p, Holm over the test columns `PRIMARY`)."""
    summary = {}
    for per_class, by_method in runs.items():
        summary[per_class] = {}
        chosen = {}
        for method, by_lr in by_method.items():
            lr = choose_learning_rate(by_lr)
            if lr is not None:
                chosen[method] = lr

        for method, lr in chosen.items():
            by_seed = by_method[method][lr]
            cells = {"learning_rate": lr, "seeds": sorted(by_seed, key=int)}
            differences = {}
            if method != "erm" and "erm" in chosen:
                differences = paired_differences(
                    scores_by_column(by_seed, COLUMNS[dataset]),
                    scores_by_column(by_method["erm"][chosen["erm"]], COLUMNS[dataset]),
                    primary=PRIMARY[dataset],
                )
            for column in COLUMNS[dataset]:
                values = np.array([100 * by_seed[s]["scores"][column] for s in cells["seeds"]])
                cell = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                }
                d = differences.get(column)
                if d is not None and d["n"] > 1:
                    cell.update(diff_mean=d["mean"], diff_se=d["se"], diff_p=d["p"])
                    if "p_holm" in d:
                        cell["diff_p_holm"] = d["p_holm"]
                cells[column] = cell
            cells["best_epochs"] = [by_seed[s]["best_epoch"] for s in cells["seeds"]]
            summary[per_class][method] = cells
    return summary


def bracketed_difference(cell):
    """`[+0.4 ± 0.4, p 0.380, Holm 0.760]` after a method's mean ± std (one
    decimal, as the accuracies beside it)."""
    d = {key: cell.get(f"diff_{key}") for key in ("mean", "se", "p", "p_holm")}
    return f"[{difference_text(d, digits=1)}]"


def rates_text(by_method):
    """How the rates of one size per class were chosen, read from its runs
    `{method: {lr: {seed: run}}}` (a report extended by several commands
    holds several grids, so the last command's arguments do not say it)."""
    cells = [by_seed for by_lr in by_method.values() for by_seed in by_lr.values()]
    rates = sorted({lr for by_lr in by_method.values() for lr in by_lr}, key=float)
    epochs = sorted({run["epochs"] for by_seed in cells for run in by_seed.values()})
    text = f"{', '.join(map(str, epochs))} epochs; "
    if len(rates) == 1:
        return text + f"lr {rates[0]} for every method and seed (no grid)."
    tune = sorted(set.intersection(*(set(by_seed) for by_seed in cells)), key=int)
    return text + (
        f"lr chosen on validation accuracy from {', '.join(rates)}, every rate run on seeds "
        f"{', '.join(tune)}, the other seeds at the chosen rate."
    )


def render(report):
    dataset, columns = report["args"]["dataset"], COLUMNS[report["args"]["dataset"]]
    lines = [
        f"# CAT few-shot on {dataset.upper()} (CAD originals), all-MiniLM-L6-v2, "
        f"{report['args']['mode']} mode",
        "",
        *command_lines(report),
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min "
        "(this invocation).",
        "",
        "Cells: accuracy %, mean ± std over seeds; for CAT* and CAT, [paired difference "
        "to ERM, same seeds, in points: mean ± standard error, paired t-test p, Holm's p "
        f"over the test columns {', '.join(PRIMARY[dataset])}; `*`: significant at 5 % after "
        "Holm]. Paper (BERT-base, full data "
        "sampling, own test set) in the last column.",
        "",
    ]
    for per_class, by_method in report["summary"].items():
        lines += [
            f"## {per_class} examples per class",
            "",
            rates_text(report["runs"][per_class]),
            "",
            "| method | lr | " + " | ".join(columns) + " | best epochs | paper |",
            "|---|---|" + "---|" * (len(columns) + 2),
        ]
        paper = PAPER[dataset].get(int(per_class))
        for method, cells in by_method.items():
            text = []
            for column in columns:
                cell = cells[column]
                value = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
                if "diff_mean" in cell:
                    value += " " + bracketed_difference(cell)
                text.append(value)
            reference = paper[METHODS.index(method)] if paper else "—"
            lines.append(
                f"| {LABELS[method]} | {cells['learning_rate']} | "
                + " | ".join(text)
                + f" | {', '.join(map(str, cells['best_epochs']))} | {reference} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("imdb", "snli"), default="imdb")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-5])
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds that run the whole learning-rate grid (default: the first two of "
        "--seeds); the other seeds run at each method's chosen rate",
    )
    parser.add_argument("--mode", choices=("cached", "full"), default="cached")
    parser.add_argument("--length", type=int, default=None, help="tokens (IMDb 256, SNLI 128)")
    parser.add_argument("--epochs", type=int, default=None, help="default: A.4's 30 / 20")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ood-size", type=int, default=500)
    parser.add_argument("--data-dir", default=None, help="upstream CAD root (default: packaged)")
    parser.add_argument("--ood-dir", default=None)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/cfkeras/cat_few_shot"))
    add_nested_arguments(parser)
    args = parser.parse_args(argv)
    stem = f"cat_few_shot_{args.dataset}_{args.mode}" + (f"_{args.tag}" if args.tag else "")
    if args.replot:
        rewrite_nested(
            args.out, stem, lambda r: {**r, "summary": summarize(r["runs"], args.dataset)}, render
        )
        return
    args.length = args.length or (256 if args.dataset == "imdb" else 128)
    if args.tune_seeds is None:
        args.tune_seeds = args.seeds[:2]
    command = "python examples/cat_few_shot.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()

    mix = default_mix_layers(6)
    start_layer = min(mix) if args.mode == "cached" else 0
    inputs = model_inputs(args, load_texts(args), start_layer)

    def report(runs):
        return {
            "command": command,
            "machine": machine_description(),
            "args": vars(args),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "sizes": {split: len(y) for split, (_, y) in inputs.items()},
            "runs": runs,
            "summary": summarize(runs, args.dataset),
        }

    rates = {str(lr): lr for lr in args.learning_rates}

    def cell(per_class, method, lr, seed):
        return (
            (str(per_class), method, str(lr), str(seed)),
            f"{per_class}/class, {method}, lr {lr}, seed {seed}",
            functools.partial(run_one, args, inputs, method, per_class, seed, lr, start_layer),
        )

    def grid(runs):
        """The whole grid on the tuning seeds, then the other seeds at each
        method's chosen rate (read lazily, after the tuning runs)."""
        for per_class in args.per_class:
            for seed in [s for s in args.seeds if s in args.tune_seeds]:
                for lr in args.learning_rates:
                    for method in args.methods:
                        yield cell(per_class, method, lr, seed)
            chosen = {}
            for method in args.methods:
                by_lr = runs.get(str(per_class), {}).get(method, {})
                by_lr = {key: by_lr.get(key, {}) for key in rates}
                chosen[method] = rates[choose_learning_rate(by_lr, seeds=args.tune_seeds)]
            for seed in [s for s in args.seeds if s not in args.tune_seeds]:
                for method in args.methods:
                    yield cell(per_class, method, chosen[method], seed)

    run_nested(args.out, stem, grid, report, render, extend=args.extend)


if __name__ == "__main__":
    main()
