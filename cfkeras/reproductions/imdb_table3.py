"""Reproduces the sentiment rows of Table 3 of Teney et al. (ECCV 2020).

Every row trains the paper's text model (tokens -> embedding 50 -> mean over
the true length -> linear + sigmoid; supplement C) as a stacked ensemble of
`--members` copies (default 6) averaging logits, each member trained exactly
as if alone, all in one step, through the same `cfkeras.GradientSupervisionModel`
trainer; Adadelta (learning rate 8, tuned on validation, rho 0.9, eps 1e-6),
40 epochs; 32 reviews in the main loss a batch in every row (16 pairs for the
GS rows, `--pairs-per-batch`); the weights of the epoch of best validation
accuracy of the whole ensemble.

Rows (they differ only in what they name):

* `chance`: originals and counterfactuals with their labels shuffled
  (supplement B, "random baseline");
* `original`: the original reviews only;
* `augmentation`: originals and counterfactuals as independent examples;
* `control`: augmentation trained on the *same pair batches* as `gs`, from
  the same initial weights, with lambda = 0 (the GS model with
  `gs_weight=0`): + GS differs from it by the GS term alone;
* `gs`: + GS (lambda 20) on the counterfactual pairs;
* `gs_stop_gradient`: the same, the target x_j - x_i treated as a constant;
* `gs_random_any`: + GS on random pairs, label-blind partners, label-aware
  contrast (pairs of equal labels carry no GS term);
* `gs_random_different`: + GS on random pairs of different labels;
* `gs_random_logit`: + GS on the random pairs of `gs_random_any`, the
  gradient of the logit f aligned with x_j - x_i for every pair, equal labels
  included (`gradient_of="label_logit"`: random relations that ignore the
  labels). With this linear head it is exactly its control: the gradient
  of f is the same vector at x_i and x_j, the GS term of x_i and that of its
  partner cancel (cos(w, d) + cos(w, -d) = 0), the loss is the constant
  lambda and the weights get no GS gradient;
* `gs_random_logit_one_way`: the same, only x_i -> x_j supervised
  (`both_directions=False`), the label-blind variant that can act on a
  linear head;
* `control_random_any`, `control_random_different`: the random pair batches
  with lambda = 0, the step-matched controls of the random rows.

Every GS row is paired by seed with its control (`CONTROLS`): the report
gives GS − control by seed, mean ± standard error, a paired t-test and the
Holm correction over the primary columns (test edited and the OOD sets).

Few counterfactuals (`--counterfactuals k`): the 1 707 training originals
plus the counterfactuals of k of them (drawn per seed). `original` is
unchanged; `augmentation` trains on the originals and the k counterfactuals
as independent examples; `control` and `gs` train on batches that mix p of
the k pairs with s single originals (`cfkeras.Pairs.with_singles`), 32 real
reviews a batch, `p = max(1, round(32 k / (1707 + k)))` (every batch holds
pairs: the GS term acts in every step), the same batches in both. lambda is
not rescaled with the share of pairs: the GS term is the mean of 1 - cos
over the batch's supervised points, so its per-step strength does not
depend on how many pairs a batch holds.

The learning rate of every row is chosen on validation (mean over seeds)
from `--learning-rates`; `--optimizer`, `--embeddings-initializer` and
`--pairs-per-batch` are the factors of the factor study (decided on
validation only). Every run records its per-epoch validation accuracy and
loss; the report plots their means per row and flags a row whose best epoch
lies in the last 10 % of the epochs for most seeds. A run cut short
resumes: the same command skips the runs of `<stem>.partial.json`.

Columns: validation (dev, both members), test original, test edited, and the
out-of-domain sets Amazon / Twitter / Yelp (when `--ood-dir` or
`$CFKERAS_OOD_DIR` is available; they are not the paper's samples).

Writes `<out>/imdb_table3[_<tag>].json` and `.md` (mean ± std over seeds,
the paper's number beside each cell, the command, wall times), a PNG, and
TensorBoard logs per run under `--log-dir`.

    python examples/reproduce_imdb_table3.py --seeds 0 1 2
    cfkeras-reproduce imdb --seeds 0 1 2
"""

import argparse
import dataclasses
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import cfkeras
from cfkeras.datasets import load_imdb_pairs, load_ood_sentiment
from cfkeras.models.ensemble import GS_SPACE, stacked_ensemble
from cfkeras.models.text_classifier import GS_LAYER
from cfkeras.reproductions.harness import (
    EpochSeconds,
    Table,
    add_optimizer_arguments,
    add_run_arguments,
    history_record,
    make_optimizer,
    replot,
    seeds_text,
    unpaired,
)
from cfkeras.selection import BestEpochWeights

ROWS = (
    "chance",
    "original",
    "augmentation",
    "control",
    "gs",
    "gs_stop_gradient",
    "gs_random_any",
    "gs_random_different",
    "gs_random_logit",
    "gs_random_logit_one_way",
    "control_random_any",
    "control_random_different",
)
# Every GS row's step-matched control: the same pair batches with lambda = 0.
CONTROLS = {
    "gs": "control",
    "gs_stop_gradient": "control",
    "gs_random_any": "control_random_any",
    "gs_random_different": "control_random_different",
    "gs_random_logit": "control_random_any",
    "gs_random_logit_one_way": "control_random_any",
}
PRIMARY = ("test_edited", "amazon", "twitter", "yelp")
# The rows of the few-counterfactuals setting (`--counterfactuals k`).
FEW_ROWS = ("original", "augmentation", "control", "gs")
COLUMNS = ("validation", "test_original", "test_edited", "amazon", "twitter", "yelp")
# Table 3 (Yelp from the supplement's Table 4, which corrects Table 3's column).
PAPER = {
    "chance": (51.4, 47.7, 49.2, 47.3, 53.3, 45.4),
    "original": (71.2, 82.6, 55.3, 78.6, 61.0, 82.8),
    "augmentation": (85.7, 82.0, 88.7, 80.8, 63.1, 87.4),
    "gs": (89.8, 83.8, 91.2, 81.6, 65.4, 88.8),
    "gs_random_any": (50.8, 49.2, 52.0, 47.4, 61.2, 57.4),
}
LABELS = {
    "chance": "Random predictions (chance: shuffled labels)",
    "original": "Baseline w/o edited training data (originals only)",
    "augmentation": "Baseline w/ edited training data (augmentation)",
    "control": "Control: augmentation on the GS pair batches (λ = 0)",
    "gs": "+ GS, counterfactual relations",
    "gs_stop_gradient": "+ GS, counterfactual relations, stop-gradient on x_j − x_i",
    "gs_random_any": "+ GS, random relations (label-blind partners)",
    "gs_random_different": "+ GS, random relations (partners of the other label)",
    "gs_random_logit": "+ GS, random relations ignoring the labels (gradient of f)",
    "gs_random_logit_one_way": "+ GS, random relations ignoring the labels, x_i → x_j only",
    "control_random_any": "Control: the label-blind random pair batches (λ = 0)",
    "control_random_different": "Control: the other-label random pair batches (λ = 0)",
}
OOD = ("amazon", "twitter", "yelp")
TABLE = Table(ROWS, COLUMNS, LABELS, PAPER, ylim=(40, 100), controls=CONTROLS, primary=PRIMARY)
BATCH = 32  # real reviews in the main loss a batch, every row


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--sequence-length", type=int, default=400)
    parser.add_argument("--vocabulary-size", type=int, default=20000)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--gs-weight", type=float, default=20.0)
    add_optimizer_arguments(parser, "adadelta", [8.0])
    parser.add_argument(
        "--pairs-per-batch",
        type=int,
        default=16,
        help="pairs a batch in the pair rows; the other rows take twice as many reviews",
    )
    parser.add_argument(
        "--embeddings-initializer",
        choices=("uniform", "normal"),
        default="uniform",
        help="Keras's uniform ±0.05 or N(0, 1)",
    )
    parser.add_argument(
        "--counterfactuals",
        default="all",
        help="k: the counterfactuals of only k training originals (few-counterfactuals "
        f"setting, rows {', '.join(FEW_ROWS)}); default all",
    )
    parser.add_argument("--ood-dir", default=os.environ.get("CFKERAS_OOD_DIR"))
    parser.add_argument("--export", default=None, help="export the best gs ensemble here")
    add_run_arguments(parser, verbose=1, limit_unit="pairs")
    args = parser.parse_args(argv)
    if args.counterfactuals != "all":
        args.counterfactuals = int(args.counterfactuals)
        if args.counterfactuals < 1:
            parser.error("--counterfactuals must be >= 1 or 'all'")
        if args.rows == list(ROWS):
            args.rows = list(FEW_ROWS)
        extra = sorted(set(args.rows) - set(FEW_ROWS))
        if extra:
            parser.error(f"with --counterfactuals k the rows are {FEW_ROWS}; not {extra}")
    return args


# === Data ===


def load_data(args):
    splits = {}
    for split in ("train", "dev", "test"):
        data = load_imdb_pairs(split, data_dir=args.data_dir)
        if args.limit:
            data = dataclasses.replace(
                data,
                **{f.name: getattr(data, f.name)[: args.limit] for f in dataclasses.fields(data)},
            )
        splits[split] = data
    vectorize = keras.layers.TextVectorization(
        max_tokens=args.vocabulary_size, output_sequence_length=args.sequence_length
    )
    train = splits["train"]
    vectorize.adapt(np.concatenate([train.text, train.text_counterfactual]))
    tokens = {
        split: data.to_pairs(vectorize, label_dtype="float32") for split, data in splits.items()
    }
    ood = {}
    if args.ood_dir:
        for name in OOD:
            texts, labels = load_ood_sentiment(name, data_dir=args.ood_dir)
            texts, labels = texts[: args.limit], labels[: args.limit]
            ood[name] = (vectorize(texts), labels.astype("float32"))
    return vectorize, tokens, ood


def few_pairs(train, k, seed):
    """`(pairs, singles_x, singles_y)`: k pairs drawn with `seed`, and the
    originals of the other pairs as single reviews."""
    chosen = np.zeros(len(train), bool)
    chosen[np.random.default_rng(seed).choice(len(train), min(k, len(train)), replace=False)] = True
    pick = lambda keep: lambda value: tf.gather(value, np.flatnonzero(keep))  # noqa: E731
    take, rest = pick(chosen), pick(~chosen)
    pairs = cfkeras.Pairs(
        take(train.original),
        take(train.counterfactual),
        train.label[chosen],
        train.counterfactual_label[chosen],
    )
    return pairs, rest(train.original), train.label[~chosen]


def mixed_batch_sizes(k, singles, batch=BATCH):
    """`(p, s)`: pairs and singles a batch, `2p + s = batch` real reviews,
    the share of pair reviews as in the data, at least one pair."""
    p = min(max(1, round(batch * k / (singles + 2 * k))), k, (batch - 1) // 2)
    return p, min(batch - 2 * p, singles)


def training_data(row, train, seed, args=None):
    """`(dataset, gs_options)` of a row; `gs_options` None for unpaired rows,
    else the `GradientSupervisionModel` settings (`gs_weight` 0 for the
    controls). `BATCH` real reviews a batch."""
    pairs_per_batch = args.pairs_per_batch if args is not None else BATCH // 2
    batch = 2 * pairs_per_batch
    gs_weight = args.gs_weight if args is not None else 20.0
    k = getattr(args, "counterfactuals", "all")
    if row == "chance":
        x = tf.concat([train.original, train.counterfactual], 0)
        y = np.concatenate([train.label, train.counterfactual_label])
        return unpaired(x, np.random.default_rng(seed).permutation(y), batch, seed), None
    if row == "original":
        return unpaired(train.original, train.label, batch, seed), None
    if k != "all" and k < len(train):
        pairs, single_x, single_y = few_pairs(train, k, seed)
        if row == "augmentation":
            x = tf.concat([single_x, pairs.original, pairs.counterfactual], 0)
            y = np.concatenate([single_y, pairs.label, pairs.counterfactual_label])
            return unpaired(x, y, batch, seed), None
        p, s = mixed_batch_sizes(len(pairs), len(single_y), batch)
        dataset = pairs.with_singles(single_x, single_y, p, s, seed=seed)
        return dataset, {"gs_weight": gs_weight if row == "gs" else 0.0}
    if row == "augmentation":
        return train.flatten(batch_size=batch, seed=seed), None
    if row in ("control", "gs", "gs_stop_gradient"):
        options = {
            "gs_weight": 0.0 if row == "control" else gs_weight,
            "stop_target_gradient": row == "gs_stop_gradient",
        }
        return train.to_dataset(batch_size=pairs_per_batch, seed=seed), options
    partners = "different_label" if row.endswith("random_different") else "any"
    options = {"gs_weight": 0.0 if row.startswith("control") else gs_weight}
    if row.startswith("gs_random_logit"):
        options["gradient_of"] = "label_logit"
        options["both_directions"] = row == "gs_random_logit"
    dataset = train.random_relations(batch_size=pairs_per_batch, partners=partners, seed=seed)
    return dataset, options


# === Runs ===


def prepare(args, row, seed, vocabulary, tokens, learning_rate=None):
    """`(train_data, ensemble, trainer, validation)` of a run, everything drawn
    after `keras.utils.set_random_seed(seed)`: a GS row and its control get
    the same batches in the same order and the same initial weights."""
    keras.utils.set_random_seed(seed)
    train_data, options = training_data(row, tokens["train"], seed, args)
    initializer = (
        keras.initializers.RandomNormal(stddev=1.0)
        if args.embeddings_initializer == "normal"
        else "uniform"
    )

    def member(member_seed):
        return cfkeras.models.bag_of_embeddings_classifier(
            vocabulary,
            sequence_length=args.sequence_length,
            embeddings_initializer=initializer,
        )

    ensemble = stacked_ensemble(member, args.members, gs_layer=GS_LAYER, seed=seed)
    trainer = cfkeras.GradientSupervisionModel(
        ensemble, gs_layer=GS_SPACE, **(options or {"gs_weight": 0.0})
    )
    rate = args.learning_rates[0] if learning_rate is None else learning_rate
    trainer.compile(
        optimizer=make_optimizer(args.optimizer, rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    dev = tokens["dev"]
    validation = (
        dev.to_dataset(batch_size=16, shuffle=False)
        if options is not None
        else dev.flatten(batch_size=32, shuffle=False)
    )
    return train_data, ensemble, trainer, validation


def run_one(args, row, seed, vocabulary, tokens, ood, learning_rate=None):
    train_data, ensemble, trainer, validation = prepare(
        args, row, seed, vocabulary, tokens, learning_rate
    )
    selection = BestEpochWeights(monitor="val_accuracy", mode="max")
    timer = EpochSeconds()
    callbacks = [selection, timer]
    if args.log_dir:
        run_dir = Path(args.log_dir) / f"length{args.sequence_length}" / f"seed{seed}" / row
        if learning_rate is not None and len(args.learning_rates) > 1:
            run_dir = run_dir / f"lr{learning_rate:g}"
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir)))
    start = time.perf_counter()
    history = trainer.fit(
        train_data,
        validation_data=validation,
        epochs=args.epochs,
        verbose=args.verbose,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    dev = tokens["dev"]

    test = tokens["test"]
    accuracy = lambda x, y: float(  # noqa: E731
        np.mean((ensemble.predict(x, batch_size=256, verbose=0)[:, 0] > 0.5) == (y > 0.5))
    )
    dev_x = tf.concat([dev.original, dev.counterfactual], 0)
    dev_y = np.concatenate([dev.label, dev.counterfactual_label])
    scores = {
        "validation": accuracy(dev_x, dev_y),
        "test_original": accuracy(test.original, test.label),
        "test_edited": accuracy(test.counterfactual, test.counterfactual_label),
    }
    for name, (x, y) in ood.items():
        scores[name] = accuracy(x, y)
    return {
        "scores": scores,
        "best_epoch": selection.best_epoch + 1,
        "train_seconds": round(seconds, 1),
        "history": history_record(history, timer),
    }, trainer


def render(report):
    """`(markdown, plot title)` of a report."""
    args = report["args"]
    length = args["sequence_length"]
    k = args.get("counterfactuals", "all")
    few = "" if k == "all" else f", counterfactuals of {k} originals"
    markdown = TABLE.markdown(
        report,
        f"IMDb, Table 3 of Teney et al. (2020) — sequence length {length}{few}",
        preamble=[
            "Accuracy (%), mean ± std over seeds "
            f"{seeds_text(report)}; the paper's number in brackets. Ensembles of {args['members']} "
            "members averaging logits, weights of the epoch of best validation accuracy; "
            f"{args.get('optimizer', 'adadelta')}, {args['epochs']} epochs, "
            f"{args.get('pairs_per_batch', 16)} pairs a batch, λ = {args['gs_weight']}, "
            f"embeddings initialised {args.get('embeddings_initializer', 'uniform')}."
        ],
        notes=[
            "The out-of-domain columns use the test sets of `shared/data/ood` (see its README), "
            "not the paper's random 2 000-example subsets: they are not directly comparable."
        ],
    )
    title = (
        f"IMDb (Teney et al. 2020, Table 3), length {length}{few}: "
        "bars = cfkeras (mean ± std over seeds), black ticks = paper"
    )
    return markdown, title


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        replot(args.replot, TABLE, render)
        return
    start = time.perf_counter()
    vectorize, tokens, ood = load_data(args)
    vocabulary = vectorize.vocabulary_size()
    best = [-1.0, None]

    def keep_best(row, seed, result, trainer):
        if row == "gs" and result["scores"]["validation"] > best[0]:
            best[:] = [result["scores"]["validation"], trainer]

    TABLE.run(
        args,
        argv,
        "imdb_table3",
        lambda row, seed, learning_rate=None: run_one(
            args, row, seed, vocabulary, tokens, ood, learning_rate
        ),
        render,
        start,
        on_result=keep_best,
    )
    if args.export and best[1] is not None:
        from cfkeras.export import export_text_classifier

        export_text_classifier(
            best[1], vectorize, args.export, class_names=["Negative", "Positive"]
        )
        print(f"exported the best gs ensemble (validation {100 * best[0]:.1f}) to {args.export}")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
