"""Shared by the reproduction scripts: runs over seeds, result tables with the
paper's numbers beside them, plots, and a partial file kept while running.

Not a public API: a helper of `reproduce_imdb_table3.py` and
`reproduce_snli_table3.py` (each adds this folder to `sys.path`).
"""

import json
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def add_run_arguments(parser, verbose=1, limit_unit="pairs"):
    """The arguments every reproduction takes: outputs, logs, replot, limit."""
    parser.add_argument("--data-dir", default=None, help="upstream CAD root (default: packaged)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--tag", default=None, help="suffix of the result files")
    parser.add_argument("--log-dir", default=None, help="TensorBoard logs (one folder a run)")
    parser.add_argument("--verbose", type=int, default=verbose, help="Keras verbosity")
    parser.add_argument(
        "--replot", default=None, help="re-render the .md and .png of a result .json, no training"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"use the first N {limit_unit} of each split (smoke tests)",
    )


def unpaired(x, y, batch_size, seed, shuffle=True):
    """Batches of independent examples, re-shuffled every epoch (training) or
    in order with the last partial batch kept (`shuffle=False`)."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=shuffle).prefetch(tf.data.AUTOTUNE)


class Table:
    """The rows, columns, labels and published numbers of one table."""

    def __init__(self, rows, columns, labels, paper, ylim=(0, 100)):
        self.rows = tuple(rows)
        self.columns = tuple(columns)
        self.labels = dict(labels)
        self.paper = dict(paper)
        self.ylim = ylim

    def run(self, args, argv, name, run_one, render, start, extra=None, on_result=None):
        """Every seed and row (`run_grid`), then `<out>/<name>[_<tag>].{json,md,png}`.

        While it runs, every finished run is kept in `<stem>.partial.json`: a
        run cut short leaves its results there (`--replot` renders them).
        Returns the report.
        """
        extra = extra or {}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = name + (f"_{args.tag}" if args.tag else "")
        partial = out / f"{stem}.partial.json"
        runs = run_grid(
            args.seeds,
            args.rows,
            run_one,
            lambda runs: partial.write_text(
                json.dumps(self.report(args, argv, start, runs, **extra), indent=2)
            ),
            on_result=on_result,
            describe=f", length {args.sequence_length}",
        )
        report = self.report(args, argv, start, runs, **extra)
        path = out / f"{stem}.json"
        path.write_text(json.dumps(report, indent=2))
        markdown = self.write(report, path, render)
        partial.unlink()
        print(markdown)
        return report

    def summarize(self, runs):
        """Mean, sample std and count over seeds, in %, per row and column."""
        summary = {}
        for row, by_seed in runs.items():
            summary[row] = {}
            for column in self.columns:
                values = [
                    100 * r["scores"][column] for r in by_seed.values() if column in r["scores"]
                ]
                if values:
                    summary[row][column] = {
                        "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "n": len(values),
                    }
        return summary

    def report(self, args, argv, start, runs, **extra):
        """The JSON report: command, machine, arguments, runs and summary."""
        command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
        return {
            "command": "python " + " ".join(command),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
            "args": vars(args),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "paper": self.paper,
            **extra,
            "runs": runs,
            "summary": self.summarize(runs),
        }

    def markdown(self, report, heading, preamble=(), notes=()):
        """A Markdown table: `mean ± std (paper)` per cell, best epochs per row."""
        lines = [
            f"# {heading}",
            "",
            f"Command: `{report['command']}`  ",
            f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min.",
            "",
            *preamble,
            "",
            "| row | " + " | ".join(self.columns) + " | best epochs |",
            "|---|" + "---|" * (len(self.columns) + 1),
        ]
        for row, cells in report["summary"].items():
            paper = self.paper.get(row)
            text = []
            for k, column in enumerate(self.columns):
                if column not in cells:
                    text.append("—")
                    continue
                cell = f"{cells[column]['mean']:.1f} ± {cells[column]['std']:.1f}"
                if paper and k < len(paper) and paper[k] is not None:
                    cell += f" ({paper[k]})"
                text.append(cell)
            epochs = ", ".join(str(r["best_epoch"]) for r in report["runs"][row].values())
            lines.append(f"| {self.labels[row]} | " + " | ".join(text) + f" | {epochs} |")
        if notes:
            lines += ["", *notes]
        return "\n".join(lines) + "\n"

    def write(self, report, path, render):
        """`render(report)` into the `.md` and `.png` beside `path`; returns the
        Markdown."""
        markdown, title = render(report)
        path.with_suffix(".md").write_text(markdown)
        self.plot(report, path.with_suffix(".png"), title)
        return markdown

    def plot(self, report, path, title):
        """Bars: mean ± std over seeds per row and column; ticks: the paper."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(report["summary"])
        columns = [c for c in self.columns if any(c in report["summary"][r] for r in rows)]
        fig, ax = plt.subplots(figsize=(2 + 1.7 * len(columns) + 0.3 * len(rows), 5.2))
        width = 0.8 / len(rows)
        for k, row in enumerate(rows):
            cells = report["summary"][row]
            means = [cells.get(c, {}).get("mean", np.nan) for c in columns]
            stds = [cells.get(c, {}).get("std", 0.0) for c in columns]
            xs = np.arange(len(columns)) + (k - (len(rows) - 1) / 2) * width
            ax.bar(xs, means, width, yerr=stds, label=self.labels[row], capsize=2)
            if row in self.paper:
                paper = [self.paper[row][self.columns.index(c)] for c in columns]
                ax.scatter(xs, paper, marker="_", s=120, color="black", zorder=3)
        ax.set_xticks(np.arange(len(columns)), columns)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(*self.ylim)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)


def run_grid(seeds, rows, run_one, write_partial, on_result=None, describe=""):
    """Runs `run_one(row, seed)` for every seed and row, in that order.

    `run_one` returns `(result, trainer)`; `on_result(row, seed, result,
    trainer)` sees each (e.g. to keep the best trainer), and after each run
    `write_partial(runs)` is called, so that a run cut short leaves every
    finished result behind. Returns `runs[row][str(seed)] = result`.
    """
    runs = {row: {} for row in rows}
    for seed in seeds:
        for row in rows:
            print(f"=== {row}, seed {seed}{describe}", flush=True)
            result, trainer = run_one(row, seed)
            print(json.dumps(result), flush=True)
            runs[row][str(seed)] = result
            if on_result is not None:
                on_result(row, seed, result, trainer)
            write_partial(runs)
    return runs


def replot(path, table, render):
    """Re-renders the `.md` and `.png` of a result `.json`, no training."""
    path = Path(path)
    table.write(json.loads(path.read_text()), path, render)
