"""Reproduces the sentiment rows of Table 3 of Teney et al. (ECCV 2020).

Every row trains the paper's text model (tokens -> embedding 50 -> mean over
the true length -> linear + sigmoid; supplement C) as a stacked ensemble of
`--members` copies (default 6) averaging logits, each member trained exactly
as if alone, all in one step, through the same `cfkeras.GradientSupervisionModel`
trainer; Adadelta (learning rate 8, tuned on validation, rho 0.9, eps 1e-6),
40 epochs; 32 reviews in the main loss a batch in every row (16 pairs for the
GS rows); the weights of the epoch of best validation accuracy of the whole
ensemble.

Rows (they differ only in what they name):

* `chance`: originals and counterfactuals with their labels shuffled
  (supplement B, "random baseline");
* `original`: the original reviews only;
* `augmentation`: originals and counterfactuals as independent examples;
* `gs`: + GS (lambda 20) on the counterfactual pairs;
* `gs_stop_gradient`: the same, the target x_j - x_i treated as a constant;
* `gs_random_any`: + GS on random pairs, label-blind (the paper's control);
* `gs_random_different`: + GS on random pairs of different labels.

Columns: validation (dev, both members), test original, test edited, and the
out-of-domain sets Amazon / Twitter / Yelp (when `--ood-dir` or
`$CFKERAS_OOD_DIR` is available; they are not the paper's samples).

Writes `<out>/imdb_table3[_<tag>].json` and `.md` (mean ± std over seeds,
the paper's number beside each cell, the command, wall times), a PNG, and
TensorBoard logs per run under `--log-dir`.

    python examples/reproduce_imdb_table3.py --seeds 0 1 2
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import cfkeras
from cfkeras.datasets import load_imdb_pairs, load_ood_sentiment
from cfkeras.models.ensemble import GS_SPACE, stacked_ensemble
from cfkeras.models.text_classifier import GS_LAYER
from cfkeras.selection import BestEpochWeights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reproduction import Table, add_run_arguments, replot, unpaired  # noqa: E402  (the examples' shared helpers)

ROWS = (
    "chance",
    "original",
    "augmentation",
    "gs",
    "gs_stop_gradient",
    "gs_random_any",
    "gs_random_different",
)
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
    "gs": "+ GS, counterfactual relations",
    "gs_stop_gradient": "+ GS, counterfactual relations, stop-gradient on x_j − x_i",
    "gs_random_any": "+ GS, random relations (label-blind partners)",
    "gs_random_different": "+ GS, random relations (partners of the other label)",
}
OOD = ("amazon", "twitter", "yelp")
TABLE = Table(ROWS, COLUMNS, LABELS, PAPER, ylim=(40, 100))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--sequence-length", type=int, default=400)
    parser.add_argument("--vocabulary-size", type=int, default=20000)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--gs-weight", type=float, default=20.0)
    parser.add_argument(
        "--learning-rate", type=float, default=8.0, help="Adadelta rate (tuned on validation)"
    )
    parser.add_argument("--ood-dir", default=os.environ.get("CFKERAS_OOD_DIR"))
    parser.add_argument("--export", default=None, help="export the best gs ensemble here")
    add_run_arguments(parser, verbose=1, limit_unit="pairs")
    return parser.parse_args(argv)


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


def training_data(row, train, seed):
    """`(dataset, gs_weight_is_used, stop_gradient)` of a row; 32 reviews a batch."""
    if row == "chance":
        x = tf.concat([train.original, train.counterfactual], 0)
        y = np.concatenate([train.label, train.counterfactual_label])
        return unpaired(x, np.random.default_rng(seed).permutation(y), 32, seed), False, False
    if row == "original":
        return unpaired(train.original, train.label, 32, seed), False, False
    if row == "augmentation":
        return train.flatten(batch_size=32, seed=seed), False, False
    if row in ("gs", "gs_stop_gradient"):
        return train.to_dataset(batch_size=16, seed=seed), True, row == "gs_stop_gradient"
    partners = "any" if row == "gs_random_any" else "different_label"
    return train.random_relations(batch_size=16, partners=partners, seed=seed), True, False


# === Runs ===


def run_one(args, row, seed, vocabulary, tokens, ood):
    keras.utils.set_random_seed(seed)
    train_data, uses_gs, stop_gradient = training_data(row, tokens["train"], seed)

    def member(member_seed):
        return cfkeras.models.bag_of_embeddings_classifier(
            vocabulary, sequence_length=args.sequence_length
        )

    ensemble = stacked_ensemble(member, args.members, gs_layer=GS_LAYER, seed=seed)
    trainer = cfkeras.GradientSupervisionModel(
        ensemble,
        gs_layer=GS_SPACE,
        gs_weight=args.gs_weight if uses_gs else 0.0,
        stop_target_gradient=stop_gradient,
    )
    trainer.compile(
        optimizer=keras.optimizers.Adadelta(
            learning_rate=args.learning_rate, rho=0.9, epsilon=1e-6
        ),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    dev = tokens["dev"]
    validation = (
        dev.to_dataset(batch_size=16, shuffle=False)
        if uses_gs
        else dev.flatten(batch_size=32, shuffle=False)
    )
    selection = BestEpochWeights(monitor="val_accuracy", mode="max")
    callbacks = [selection]
    if args.log_dir:
        run_dir = Path(args.log_dir) / f"length{args.sequence_length}" / f"seed{seed}" / row
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir)))
    start = time.perf_counter()
    trainer.fit(
        train_data,
        validation_data=validation,
        epochs=args.epochs,
        verbose=args.verbose,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start

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
    }, trainer


def render(report):
    """`(markdown, plot title)` of a report."""
    args = report["args"]
    length = args["sequence_length"]
    markdown = TABLE.markdown(
        report,
        f"IMDb, Table 3 of Teney et al. (2020) — sequence length {length}",
        preamble=[
            "Accuracy (%), mean ± std over seeds "
            f"{args['seeds']}; the paper's number in brackets. Ensembles of {args['members']} "
            "members averaging logits, weights of the epoch of best validation accuracy."
        ],
        notes=[
            "The out-of-domain columns use the test sets of `shared/data/ood` (see its README), "
            "not the paper's random 2 000-example subsets: they are not directly comparable."
        ],
    )
    title = (
        f"IMDb (Teney et al. 2020, Table 3), length {length}: "
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
        lambda row, seed: run_one(args, row, seed, vocabulary, tokens, ood),
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
