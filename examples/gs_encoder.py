"""GS vs augmentation on a frozen all-MiniLM-L6-v2, with the CAD pairs.

The frozen mode of `cfkeras.encoders`: every text is embedded once (masked
mean of MiniLM's last hidden states, `pooled_embeddings`, kept in
`--cache-dir`), and a tanh MLP head (`pooled_head`, 384 → 384 → classes) is
trained on the pooled vectors. Two rows on the *same pair batches*, from the
same initial weights and seeds:

- `control`: augmentation, `GradientSupervisionModel(head, gs_weight=0)`:
  both members of every pair in the main loss, no GS term.
- `gs`: the same with the GS term in the pooled space, `gs_weight = λ`.

The learning rate (both rows) and λ (GS) are chosen on validation (the CAD
dev pairs, originals and edits) from the grids `--learning-rates` and
`--gs-weights`, by the mean over seeds; the weights of the best validation
epoch are evaluated. `--pairs all` trains on every CAD training pair, `--pairs
100` on 100 pairs drawn per seed (the small-pairs setting). SNLI pairs each
original with its four edits; the main loss weights members so that every
unique example counts once (originals 0.4, edits 1.6, mean 1), in both rows.

Reported: accuracy per column, mean ± std over seeds, and the paired
difference GS − control by seed (mean ± standard error, paired t-test,
Holm-corrected over the primary columns: test edited and the OOD sets for
IMDb, the revised test sets for SNLI). Every finished run is kept in
`<out>/<stem>.partial.json`; the same command resumes from it.

Usage:
  python examples/gs_encoder_frozen.py --dataset imdb --pairs all 100 --seeds 0 1 2 3 4
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

import cfkeras
from cfkeras import encoders
from cfkeras.reproductions.harness import machine_description, run_nested

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


# === Data: every text embedded once ===


def embed_all(args, texts):
    """Pooled MiniLM vectors of `texts` (str, or (premise, hypothesis) rows),
    cached on disk by content."""
    digest = hashlib.sha256(json.dumps([args.length, texts.tolist()]).encode()).hexdigest()[:16]
    path = Path(args.cache_dir, f"pooled_{digest}.npy")
    if path.is_file():
        return np.load(path)
    backbone, preprocessor = encoders.load_minilm(sequence_length=args.length)
    t0 = time.perf_counter()
    vectors = encoders.pooled_embeddings(
        backbone, encoders.tokenize(preprocessor, texts), batch_size=16
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    return vectors


def load(args):
    """`(pairs, evaluation)`: `{split: Pairs}` for train and validation, and
    `{column: (vectors, labels)}` for the test columns."""
    if args.dataset == "imdb":
        pairs, evaluation = {}, {}
        for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
            p = cfkeras.datasets.load_imdb_pairs(name, data_dir=args.data_dir)
            both = embed_all(args, np.concatenate([p.text, p.text_counterfactual]))
            original, edited = both[: len(p)], both[len(p) :]
            if split == "test":
                evaluation["test_original"] = (original, p.label)
                evaluation["test_edited"] = (edited, p.label_counterfactual)
            else:
                pairs[split] = cfkeras.Pairs(
                    original, edited, p.label, p.label_counterfactual, group_id=p.group_id
                )
        ood_dir = args.ood_dir or os.environ.get("CFKERAS_OOD_DIR")
        for name in ("amazon", "twitter", "yelp"):
            texts, labels = cfkeras.datasets.load_ood_sentiment(name, ood_dir)
            keep = np.random.default_rng(0).permutation(len(texts))[: args.ood_size]
            evaluation[name] = (embed_all(args, texts[keep]), labels[keep])
        return pairs, evaluation
    pairs, evaluation = {}, {}
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        g = cfkeras.datasets.load_snli_groups(name, data_dir=args.data_dir)
        originals = embed_all(args, np.stack([g.premise, g.hypothesis], 1))
        edits = embed_all(
            args, np.stack([g.edit_premise.reshape(-1), g.edit_hypothesis.reshape(-1)], 1)
        ).reshape(len(g), 4, -1)
        if split == "test":
            evaluation["test_original"] = (originals, g.label)
            for changed in ("premise", "hypothesis"):
                keep = g.edit_changed == changed
                evaluation[f"test_revised_{changed}"] = (edits[keep], g.edit_label[keep])
            continue
        group = np.repeat(np.arange(len(g)), 4)
        # Originals sit in four pairs, edits in one: 1/4 and 1, scaled to mean 1.
        weights = {
            "original": np.full(4 * len(g), 0.4, "float32"),
            "counterfactual": np.full(4 * len(g), 1.6, "float32"),
        }
        pairs[split] = cfkeras.Pairs(
            originals[group],
            edits.reshape(4 * len(g), -1),
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
    pick = lambda v: None if v is None else keras.tree.map_structure(lambda a: a[index], v)  # noqa: E731
    return cfkeras.Pairs(
        pick(pairs.original),
        pick(pairs.counterfactual),
        pick(pairs.label),
        pick(pairs.counterfactual_label),
        sample_weight=pick(pairs.sample_weight),
        group_id=pairs.group_id[index],
    )


# === One run ===


def run_one(args, pairs, evaluation, size, seed, lr, gs_weight):
    keras.utils.set_random_seed(seed)
    train = pairs["train"] if size == "all" else subset(pairs["train"], int(size), seed)
    head = encoders.pooled_head(384, num_classes=NUM_CLASSES[args.dataset])
    model = cfkeras.GradientSupervisionModel(head, gs_weight=gs_weight)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    batch = min(args.batch_size, len(train))
    best = cfkeras.selection.BestEpochWeights(monitor="val_accuracy")
    history = model.fit(
        train.to_dataset(batch_size=batch, seed=seed),
        validation_data=pairs["validation"].flatten(batch_size=256, shuffle=False),
        epochs=args.epochs,
        callbacks=[best],
        verbose=0,
    ).history
    scores = {"validation": max(history["val_accuracy"])}
    for column, (x, y) in evaluation.items():
        logits = head.predict(x, batch_size=512, verbose=0)
        scores[column] = float(np.mean(np.argmax(logits, -1) == y))
    return {
        "scores": scores,
        "best_epoch": int(np.argmax(history["val_accuracy"])) + 1,
        "val_accuracy": [round(float(v), 4) for v in history["val_accuracy"]],
        "train_pairs": len(train),
    }


# === Report ===


def key(lr, gs_weight):
    return f"lr={lr:g},gs={gs_weight:g}"


def summarize(runs, dataset, seeds):
    """Per size: the setting of each row with the best mean validation
    accuracy over `seeds`, its columns, and GS − control by seed."""
    from scipy import stats

    summary = {}
    for size, by_row in runs.items():
        chosen = {}
        for row, by_setting in by_row.items():
            complete = {s: r for s, r in by_setting.items() if all(str(k) in r for k in seeds)}
            if complete:
                mean_val = {
                    s: np.mean([r[str(k)]["scores"]["validation"] for k in seeds])
                    for s, r in complete.items()
                }
                chosen[row] = max(mean_val, key=mean_val.get)
        cells = {}
        for row, setting in chosen.items():
            runs_row = by_row[row][setting]
            cells[row] = {
                "setting": setting,
                "best_epochs": [runs_row[str(k)]["best_epoch"] for k in seeds],
            }
            for column in COLUMNS[dataset]:
                values = np.array([100 * runs_row[str(k)]["scores"][column] for k in seeds])
                cells[row][column] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                }
        if len(chosen) == 2 and len(seeds) > 1:
            gs, control = (by_row[r][chosen[r]] for r in ("gs", "control"))
            diffs = {}
            for column in COLUMNS[dataset]:
                d = np.array(
                    [
                        100 * (gs[str(k)]["scores"][column] - control[str(k)]["scores"][column])
                        for k in seeds
                    ]
                )
                p = float(stats.ttest_1samp(d, 0.0).pvalue) if np.any(d != 0) else 1.0
                diffs[column] = {
                    "by_seed": d.round(2).tolist(),
                    "mean": float(d.mean()),
                    "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                    "p": p,
                }
            # Holm over the primary columns.
            primary = sorted(PRIMARY[dataset], key=lambda c: diffs[c]["p"])
            running = 0.0
            for rank, column in enumerate(primary):
                running = max(running, min(1.0, (len(primary) - rank) * diffs[column]["p"]))
                diffs[column]["p_holm"] = running
            cells["difference"] = diffs
        summary[size] = cells
    return summary


def render(report):
    dataset = report["args"]["dataset"]
    columns = COLUMNS[dataset]
    lines = [
        f"# GS vs augmentation on frozen all-MiniLM-L6-v2 embeddings, {dataset.upper()} CAD pairs",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min "
        "(this invocation).",
        "",
        "Accuracy %, mean ± std over seeds "
        f"{report['args']['seeds']}; the control is augmentation on the same pair batches "
        "(λ = 0); settings chosen on validation. Difference: GS − control by seed, mean ± "
        "standard error, paired t-test p (Holm-corrected over the primary columns "
        f"{', '.join(PRIMARY[dataset])}).",
        "",
    ]
    for size, cells in report["summary"].items():
        lines += [
            f"## {size} training pairs",
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
            text = []
            for col in columns:
                cell = f"{d[col]['mean']:+.2f} ± {d[col]['se']:.2f} (p {d[col]['p']:.3f}"
                cell += f", Holm {d[col]['p_holm']:.3f})" if "p_holm" in d[col] else ")"
                text.append(cell)
            lines.append("| GS − control | | " + " | ".join(text) + " | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("imdb", "snli"), default="imdb")
    parser.add_argument("--pairs", nargs="+", default=["all", "100"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--gs-weights", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per batch")
    parser.add_argument("--length", type=int, default=None, help="tokens (IMDb 256, SNLI 128)")
    parser.add_argument("--ood-size", type=int, default=500)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ood-dir", default=None)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/cfkeras/frozen"))
    parser.add_argument("--out", default="results")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    args.length = args.length or (256 if args.dataset == "imdb" else 128)
    command = "python examples/gs_encoder_frozen.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    start = time.perf_counter()
    pairs, evaluation = load(args)

    stem = f"gs_encoder_frozen_{args.dataset}" + (f"_{args.tag}" if args.tag else "")

    def report(runs):
        return {
            "command": command,
            "machine": machine_description(),
            "args": vars(args),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "runs": runs,
            "summary": summarize(runs, args.dataset, args.seeds),
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
    run_nested(args.out, stem, grid, report, render)


if __name__ == "__main__":
    main()
