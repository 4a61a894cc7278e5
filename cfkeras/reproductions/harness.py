"""Shared by the reproductions: runs over seeds and a learning-rate grid,
result tables with the paper's numbers beside them, per-epoch validation
curves, paired differences to step-matched controls, plots, and a partial
file that a cut-short run resumes from.

`examples/_reproduction.py` re-exports the names the example scripts use
(`Table`, `add_run_arguments`, `replot`, `unpaired`, `run_grid`).
"""

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cfkeras.reproductions.statistics import difference_text, paired_differences, scores_by_column

# Arguments that may change between a cut-short run and its resumption.
RESUMABLE_CHANGES = (
    "seeds",
    "rows",
    "learning_rates",
    "tune_seeds",
    "verbose",
    "log_dir",
    "replot",
    "restart",
    "export",
)
# The share of the last epochs where a best epoch means "maybe not converged".
LATE_SHARE = 0.1
# The program of the reports' "command" (the console entry point sets it).
PROGRAM = None
# The ending of a grid's file of finished runs while it runs (or was cut).
PARTIAL_SUFFIX = ".partial.json"


def partial_path(out, stem):
    """`<out>/<stem>.partial.json`: the finished runs of a grid still running
    or cut short, from which the same command resumes (not a report)."""
    return Path(out) / f"{stem}{PARTIAL_SUFFIX}"


def first_late_epoch(epochs):
    """The first epoch of the last `LATE_SHARE` of `epochs` (at least the last
    epoch): a best epoch from there on means "maybe not converged"."""
    return epochs - max(1, math.ceil(LATE_SHARE * epochs)) + 1


def is_late(best_epoch, epochs):
    """Whether a run of `epochs` epochs had its best epoch in their last
    `LATE_SHARE`."""
    return int(best_epoch) >= first_late_epoch(epochs)


def late_majority(best_epochs, epochs):
    """Whether most runs had their best epoch late (`is_late`): the reports'
    "not converged" rule. `epochs`: the epochs every run ran, or one number
    per run (a run stopped early ran fewer)."""
    ran = epochs if isinstance(epochs, (list, tuple)) else [epochs] * len(best_epochs)
    n_late = sum(is_late(b, n) for b, n in zip(best_epochs, ran, strict=True))
    return bool(best_epochs) and n_late > len(best_epochs) / 2


def machine_description():
    """The machine line of every report: architecture, cores, versions."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def run_nested(out, stem, grid, make_report, render, extend=False):
    """Runs a grid whose results nest by key, resumably; writes the report.

    `grid` is a list of `(keys, label, run)`: the result of `run()` goes to
    `runs[keys[0]][keys[1]]...[keys[-1]]`, and a run whose place is filled
    in `<out>/<stem>.partial.json` (left by an earlier call of the same
    command) is skipped. `grid` may also be a function of `runs` returning
    an iterable (e.g. a generator): it is read lazily, one cell after the
    previous one has run, so later cells may depend on earlier results (a
    learning rate tuned on the first seeds, then used for the others).
    After each run the partial file is rewritten with `make_report(runs)`;
    at the end `<stem>.json` and `<stem>.md` (`render(report)`) are written
    and the partial file removed. Returns the final report.

    A report with a `command` also gets `commands`: the commands of the
    partial file it resumed, then its own (unless already there:
    `extend_history`), so that a grid finished by several invocations names
    them all (`command_lines`).

    `extend=True` adds the grid's cells to the finished `<stem>.json` (its
    runs and commands are kept; e.g. a larger training size at its own
    learning rate in the same report) when no partial file is there to
    resume; without a finished report it is an error. Without `extend` a
    finished report is not read: the grid runs again from scratch.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out, stem)
    finished = out / f"{stem}.json"
    if partial.is_file():
        previous = json.loads(partial.read_text())
    elif extend:
        if not finished.is_file():
            raise FileNotFoundError(f"{finished}: no finished report to extend (drop --extend)")
        previous = json.loads(finished.read_text())
    else:
        previous = {}
    runs, history = previous.get("runs", {}), command_history(previous)

    def make_report_with_history(runs):
        report = make_report(runs)
        if report.get("command"):
            report["commands"] = extend_history(history, [report["command"]])
        return report

    if callable(grid):
        grid = grid(runs)
    total = f"/{len(grid)}" if hasattr(grid, "__len__") else ""
    for k, (keys, label, run) in enumerate(grid):
        cell = runs
        for key in keys[:-1]:
            cell = cell.setdefault(key, {})
        if keys[-1] in cell:
            continue
        print(f"=== [{k + 1}{total}] {label}", flush=True)
        cell[keys[-1]] = run()
        scores = {c: round(v, 4) for c, v in cell[keys[-1]]["scores"].items()}
        print(json.dumps(scores), flush=True)
        partial.write_text(json.dumps(make_report_with_history(runs), indent=2))
    final = make_report_with_history(runs)
    finished.write_text(json.dumps(final, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(final))
    partial.unlink(missing_ok=True)
    print(render(final))
    return final


def add_run_arguments(parser, verbose=1, limit_unit="pairs"):
    """The arguments every reproduction takes: outputs, logs, replot, limit,
    restart."""
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
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore <out>/<stem>.partial.json (by default the same command resumes from it)",
    )


def add_optimizer_arguments(parser, optimizer, learning_rates):
    """`--optimizer` and `--learning-rates` (a grid; every row takes the rate
    of best mean validation accuracy; `--learning-rate` is an alias)."""
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer)
    parser.add_argument(
        "--learning-rates",
        "--learning-rate",
        dest="learning_rates",
        type=float,
        nargs="+",
        default=list(learning_rates),
        help="grid of learning rates; each row's is chosen on validation",
    )
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="+",
        default=None,
        help="run the learning-rate grid on these seeds only (a subset of --seeds); "
        "the other seeds run at each row's rate chosen on them (default: the grid on "
        "every seed)",
    )


OPTIMIZERS = ("adadelta", "adam")


def make_optimizer(name, learning_rate):
    """AdaDelta as in the paper (rho 0.9, eps 1e-6) or Adam (Keras defaults)."""
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=learning_rate, rho=0.9, epsilon=1e-6)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}; received {name!r}.")


def unpaired(x, y, batch_size, seed, shuffle=True):
    """Batches of independent examples, re-shuffled every epoch (training) or
    in order with the last partial batch kept (`shuffle=False`)."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=shuffle).prefetch(tf.data.AUTOTUNE)


class EpochSeconds(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch (validation included), in `seconds`:
    the first holds the XLA compilation, the others time the next runs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 2))


def history_record(history, epoch_seconds=None):
    """The per-epoch validation figures of a Keras `History` (and the
    seconds of every epoch, from `EpochSeconds`), for the report."""
    keys = ("val_accuracy", "val_loss", "val_main_loss")
    record = {
        k: [round(float(v), 5) for v in history.history[k]] for k in keys if k in history.history
    }
    if epoch_seconds is not None:
        record["epoch_seconds"] = list(epoch_seconds.seconds)
    return record


# === Grid keys: a row at one learning rate ===


def grid_key(row, learning_rate):
    return f"{row}@lr={learning_rate:g}"


def split_key(key):
    """`(row, learning_rate)` of a grid key; `(row, None)` for a bare row."""
    if "@lr=" not in key:
        return key, None
    row, rate = key.split("@lr=")
    return row, float(rate)


class Table:
    """The rows, columns, labels and published numbers of one table.

    Args:
        rows, columns: names.
        labels: `{row: label}`.
        paper: `{row: tuple}` of published numbers aligned with `columns`
            (None where the paper has none; a shorter tuple leaves the
            remaining columns empty).
        ylim: the y range of the bar plot.
        controls: `{row: control_row}`: the step-matched control of a GS row
            (same batches, λ = 0); each pair gets paired statistics.
        primary: the columns of the Holm family.
    """

    def __init__(
        self,
        rows,
        columns,
        labels,
        paper,
        ylim=(0, 100),
        controls=None,
        primary=(),
        ylabel="accuracy (%)",
    ):
        self.rows = tuple(rows)
        self.columns = tuple(columns)
        self.labels = dict(labels)
        self.paper = dict(paper)
        self.ylim = ylim
        self.ylabel = ylabel
        self.controls = dict(controls or {})
        self.primary = tuple(primary)

    def paper_value(self, row, column):
        values = self.paper.get(row)
        k = self.columns.index(column)
        if values is None or k >= len(values):
            return None
        return values[k]

    # === Running ===

    def run(self, args, argv, name, run_one, render, start, extra=None, on_result=None):
        """Every seed, row (and learning rate of `args.learning_rates`, if
        any), then `<out>/<name>[_<tag>].{json,md,png}`.

        `run_one(row, seed)` (with a grid: `run_one(row, seed,
        learning_rate=lr)`) returns `(result, trainer)`; `on_result(row, seed,
        result, trainer)` sees every run of this call. While it runs,
        every finished run is kept in `<stem>.partial.json`; the same command
        (without `--restart`) resumes from it, or from the finished
        `<stem>.json`, skipping finished runs: more seeds, rows or rates can
        be added to a finished report. With `args.tune_seeds` (a subset of
        the seeds), the grid runs on those seeds only and the other seeds
        at each row's rate chosen on them (`tuning_seeds`).
        Returns the report.
        """
        extra = extra or {}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = name + (f"_{args.tag}" if args.tag else "")
        partial = partial_path(out, stem)
        rates = getattr(args, "learning_rates", None)
        if rates:
            keys = [grid_key(row, rate) for row in args.rows for rate in rates]

            def run_key(key, seed):
                row, rate = split_key(key)
                return run_one(row, seed, learning_rate=rate)
        else:
            keys, run_key = list(args.rows), run_one
        done, history = {}, []
        previous = partial if partial.exists() else out / f"{stem}.json"
        if previous.exists() and not getattr(args, "restart", False):
            previous_report = json.loads(previous.read_text())
            done = resumable_runs(previous_report, args)
            history = command_history(previous_report)
            print(f"resuming from {previous}: {sum(map(len, done.values()))} runs done", flush=True)
        extra = {**extra, "history": history}
        tune = tuning_seeds(args)

        def grid_over(seeds, grid_keys, done):
            return run_grid(
                seeds,
                grid_keys,
                run_key,
                lambda runs: partial.write_text(
                    json.dumps(self.report(args, argv, start, runs, **extra), indent=2)
                ),
                on_result=None
                if on_result is None
                else lambda key, seed, result, trainer: on_result(
                    split_key(key)[0], seed, result, trainer
                ),
                describe=(
                    f", length {args.sequence_length}" if hasattr(args, "sequence_length") else ""
                ),
                done=done,
            )

        if tune is None:
            grid = grid_over(args.seeds, keys, done)
        else:
            # The grid on the tuning seeds, then the other seeds at each
            # row's rate chosen on those seeds alone.
            print(f"learning-rate grid on the tuning seeds {tune}", flush=True)
            grid = grid_over(tune, keys, done)
            _, chosen = self.choose(grid, tune, tune=tune)
            rest = [s for s in args.seeds if s not in tune]
            chosen_keys = [grid_key(row, chosen[row]) for row in args.rows if row in chosen]
            print(f"chosen on seeds {tune}: {chosen}; now seeds {rest}", flush=True)
            grid = grid_over(rest, chosen_keys, grid)
        report = self.report(args, argv, start, grid, **extra)
        path = out / f"{stem}.json"
        path.write_text(json.dumps(report, indent=2))
        markdown = self.write(report, path, render)
        partial.unlink(missing_ok=True)
        print(markdown)
        return report

    # === The report ===

    def choose(self, grid, seeds, tune=None):
        """`(runs, chosen)`: per row, the runs of the learning rate with the
        best mean validation accuracy over the seeds it has all of (the
        first such rate on ties), and that rate (None without a grid).
        With `tune` (the tuning seeds), the rate is chosen on those seeds
        alone, among the rates that have all of them; its runs on every
        seed are returned."""
        if tune:
            tuned = {
                key: {str(s): by_seed[str(s)] for s in tune if str(s) in by_seed}
                for key, by_seed in grid.items()
            }
            _, chosen = self.choose(tuned, tune)
            runs = {row: grid[grid_key(row, rate)] for row, rate in chosen.items()}
            return runs, chosen
        runs, chosen = {}, {}
        candidates = {}
        for key, by_seed in grid.items():
            row, rate = split_key(key)
            candidates.setdefault(row, []).append((rate, by_seed))
        order = lambda row: self.rows.index(row) if row in self.rows else len(self.rows)  # noqa: E731
        for row in sorted(candidates, key=order):
            options = candidates[row]
            if len(options) == 1 and options[0][0] is None:
                runs[row], chosen[row] = options[0][1], None
                continue
            complete = [(r, s) for r, s in options if all(str(k) in s for k in seeds)]
            pool = complete or options
            best = max(
                pool,
                key=lambda option: np.mean(
                    [r["scores"]["validation"] for r in option[1].values()] or [-1.0]
                ),
            )
            if best[1]:
                runs[row], chosen[row] = best[1], best[0]
        return runs, chosen

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

    @staticmethod
    def curves(runs):
        """Per row, the mean over seeds of every per-epoch validation figure."""
        out = {}
        for row, by_seed in runs.items():
            histories = [r["history"] for r in by_seed.values() if "history" in r]
            if not histories:
                continue
            out[row] = {}
            for key in histories[0]:
                if key == "epoch_seconds":
                    continue
                series = [h[key] for h in histories if key in h]
                length = min(map(len, series))
                out[row][key] = [float(v) for v in np.mean([s[:length] for s in series], axis=0)]
        return out

    @staticmethod
    def convergence(runs, epochs):
        """Per row: the best epochs, the seeds whose best epoch lies in the
        last `LATE_SHARE` of the epochs they ran (`late_runs`; a run's
        `epochs_run`, when it stopped early, else `epochs`), and `converged`
        False when that is so for most seeds."""
        out = {}
        for row, by_seed in runs.items():
            best = [int(r["best_epoch"]) for r in by_seed.values()]
            ran = [int(r.get("epochs_run", epochs)) for r in by_seed.values()]
            late_runs = [s for s, b, n in zip(by_seed, best, ran) if is_late(b, n)]
            out[row] = {
                "best_epochs": best,
                "epochs_run": ran,
                "late_seeds": len(late_runs),
                "late_runs": late_runs,
                "late_from_epoch": first_late_epoch(epochs),
                "converged": not late_majority(best, ran),
            }
        return out

    def differences(self, runs):
        """Paired GS − control statistics for every GS row whose control ran."""
        out = {}
        for row, control in self.controls.items():
            if row not in runs or control not in runs:
                continue
            out[row] = {
                "control": control,
                "columns": paired_differences(
                    scores_by_column(runs[row], self.columns),
                    scores_by_column(runs[control], self.columns),
                    primary=self.primary,
                ),
            }
        return out

    def report(self, args, argv, start, grid, history=(), **extra):
        """The JSON report: command (and `commands`: every command whose runs
        it holds, `history` then this one), machine, arguments, every run of
        the grid, the chosen runs, summary, curves, convergence,
        differences."""
        program = PROGRAM or ["python", sys.argv[0]]
        command = [*program, *(sys.argv[1:] if argv is None else argv)]
        commands = extend_history(history, [" ".join(command)])
        runs, chosen = self.choose(grid, args.seeds, tune=tuning_seeds(args))
        epochs = getattr(args, "epochs", None) or max(
            [r["best_epoch"] for by_seed in runs.values() for r in by_seed.values()] or [1]
        )
        report = {
            "command": " ".join(command),
            "machine": machine_description(),
            "args": vars(args),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "paper": self.paper,
            **extra,
            "grid": grid,
            "chosen_learning_rate": chosen,
            "runs": runs,
            "summary": self.summarize(runs),
            "curves": self.curves(runs),
            "convergence": self.convergence(runs, epochs),
            "differences": self.differences(runs),
            "primary": list(self.primary),
            "commands": commands,
        }
        return report

    # === Markdown ===

    def markdown(self, report, heading, preamble=(), notes=(), selection="mean over seeds"):
        """A Markdown table (`mean ± std (paper)` per cell, the chosen learning
        rate, best epochs and a convergence flag per row), then the paired
        differences to the controls and the figures."""
        chosen = report.get("chosen_learning_rate", {})
        convergence = report.get("convergence", {})
        lines = [
            f"# {heading}",
            "",
            *command_lines(report),
            f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min "
            "(of the last command).",
            "",
            *preamble,
            "",
            "| row | " + " | ".join(self.columns) + " | lr | best epochs |",
            "|---|" + "---|" * (len(self.columns) + 2),
        ]
        for row, cells in report["summary"].items():
            text = []
            for column in self.columns:
                if column not in cells:
                    text.append("—")
                    continue
                cell = f"{cells[column]['mean']:.1f} ± {cells[column]['std']:.1f}"
                paper = self.paper_value(row, column)
                if paper is not None:
                    cell += f" ({paper})"
                text.append(cell)
            by_seed = report["runs"][row].values()
            flag = convergence.get(row, {})
            if any("epochs_run" in r for r in by_seed):
                # Early stopping: "best / ran" per seed, every late run flagged.
                epochs = ", ".join(f"{r['best_epoch']}/{r.get('epochs_run', '?')}" for r in by_seed)
                if flag.get("late_runs"):
                    epochs += (
                        " **best epoch in the last tenth of the epochs run: seeds "
                        f"{', '.join(flag['late_runs'])}**"
                    )
            else:
                epochs = ", ".join(str(r["best_epoch"]) for r in by_seed)
                if flag and not flag["converged"]:
                    epochs += f" **not converged** (best ≥ epoch {flag['late_from_epoch']})"
            rate = chosen.get(row)
            lines.append(
                f"| {self.labels[row]} | "
                + " | ".join(text)
                + f" | {'—' if rate is None else f'{rate:g}'} | {epochs} |"
            )
        grid = rates_text(report)
        if grid:
            early = any("epochs_run" in r for by in report["runs"].values() for r in by.values())
            flag = (
                "Flagged in bold: a run whose best epoch lies in the last "
                f"{100 * LATE_SHARE:.0f} % of the epochs it ran."
                if early
                else "A row flagged **not converged** has its best epoch in the last "
                f"{100 * LATE_SHARE:.0f} % of the epochs for most seeds."
            )
            tune = report.get("args", {}).get("tune_seeds")
            if tune and any(len(rates) > 1 for rates in rates_by_row(report)):
                selection = f"mean over the tuning seeds {tune}; the other seeds ran at that rate"
            lines += [
                "",
                f"Learning rate of every row chosen on validation ({selection}) from {grid}. "
                + flag,
            ]
        lines += self.differences_markdown(report)
        if notes:
            lines += ["", *notes]
        return "\n".join(lines) + "\n"

    def differences_markdown(self, report):
        differences = report.get("differences") or {}
        if not differences:
            return []
        primary = report.get("primary", [])
        lines = [
            "",
            "## GS − its step-matched control (same batches, λ = 0), by seed",
            "",
            "Points: mean ± standard error over seeds; p of the two-sided paired t-test "
            f"at 5 %; Holm-corrected over the primary columns ({', '.join(primary)}). "
            "`*`: significant (after Holm for primary columns).",
            "",
            "| row − control | " + " | ".join(self.columns) + " |",
            "|---|" + "---|" * len(self.columns),
        ]
        for row, entry in differences.items():
            cells = []
            for column in self.columns:
                d = entry["columns"].get(column)
                if d is None:
                    cells.append("—")
                    continue
                cells.append(difference_text(d))
            lines.append(
                f"| {self.labels[row]} − {self.labels[entry['control']]} | "
                + " | ".join(cells)
                + " |"
            )
        return lines

    # === Figures ===

    def write(self, report, path, render):
        """`render(report)` into the `.md` and `.png` beside `path` (and
        `_curves.png`, `_differences.png` when the report has them);
        returns the Markdown."""
        markdown, title = render(report)
        stem = path.with_suffix("")
        figures = [f"![accuracy]({path.with_suffix('.png').name})"]
        if report.get("curves"):
            self.plot_curves(report, Path(f"{stem}_curves.png"), title)
            figures.append(f"![validation curves]({Path(f'{stem}_curves.png').name})")
        if report.get("differences"):
            self.plot_differences(report, Path(f"{stem}_differences.png"), title)
            figures.append(f"![paired differences]({Path(f'{stem}_differences.png').name})")
        markdown += "\n" + "\n".join(figures) + "\n"
        path.with_suffix(".md").write_text(markdown)
        self.plot(report, path.with_suffix(".png"), title)
        return markdown

    @staticmethod
    def _pyplot():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt

    def plot(self, report, path, title):
        """Bars: mean ± std over seeds per row and column; ticks: the paper."""
        plt = self._pyplot()
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
            paper = [self.paper_value(row, c) for c in columns]
            if any(v is not None for v in paper):
                paper = [np.nan if v is None else v for v in paper]
                ax.scatter(xs, paper, marker="_", s=120, color="black", zorder=3)
        ax.set_xticks(np.arange(len(columns)), columns, fontsize=8)
        ax.set_ylabel(self.ylabel)
        ax.set_ylim(*self.ylim)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)

    def plot_curves(self, report, path, title):
        """Validation accuracy and main loss per epoch, mean over seeds, one
        line a row."""
        plt = self._pyplot()
        curves = report["curves"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, label in (
            (axes[0], "val_accuracy", "validation accuracy"),
            (axes[1], "val_main_loss", "validation main loss"),
        ):
            for row, series in curves.items():
                values = series.get(key) or series.get("val_loss")
                if values:
                    ax.plot(np.arange(1, len(values) + 1), values, label=self.labels[row])
            ax.set_xlabel("epoch")
            ax.set_ylabel(label + " (mean over seeds)")
        axes[0].legend(fontsize=6)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)

    def plot_differences(self, report, path, title):
        """GS − control per column: mean ± standard error over seeds."""
        plt = self._pyplot()
        differences = report["differences"]
        fig, ax = plt.subplots(figsize=(2 + 1.4 * len(self.columns), 4.2))
        width = 0.8 / max(1, len(differences))
        for k, (row, entry) in enumerate(differences.items()):
            columns = [c for c in self.columns if c in entry["columns"]]
            means = [entry["columns"][c]["mean"] for c in columns]
            errors = [entry["columns"][c]["se"] or 0.0 for c in columns]
            xs = np.array([self.columns.index(c) for c in columns], float)
            xs += (k - (len(differences) - 1) / 2) * width
            ax.errorbar(xs, means, yerr=errors, fmt="o", capsize=3, label=self.labels[row])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(self.columns)), self.columns, fontsize=8)
        ax.set_ylabel("GS − control (points), mean ± s.e.")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def command_history(report):
    """The commands whose runs a report holds: its `commands`, or its one
    `command` (reports written before `commands` existed)."""
    if report.get("commands"):
        return list(report["commands"])
    return [report["command"]] if report.get("command") else []


def extend_history(history, commands):
    """`history` (a list of commands) followed by those of `commands` it
    does not hold yet, in order: the one rule by which every report keeps
    the commands whose runs it holds (a command given again to resume adds
    nothing)."""
    out = list(history)
    for command in commands:
        if command not in out:
            out.append(command)
    return out


def rates_by_row(report):
    """`{rate set: [rows]}`: the learning rates each row's choice was made
    from, read from the report's grid (not from the last command's
    `--learning-rates`, which may have extended only some rows); a report
    without a grid has every row on `args.learning_rates`. Empty without
    rates."""
    by_row = {}
    for key in report.get("grid") or {}:
        row, rate = split_key(key)
        if rate is not None:
            by_row.setdefault(row, set()).add(rate)
    if not by_row:
        rates = report.get("args", {}).get("learning_rates")
        return {tuple(sorted(rates)): []} if rates else {}
    out = {}
    for row, rates in by_row.items():
        out.setdefault(tuple(sorted(rates)), []).append(row)
    return out


def rates_text(report):
    """`rates_by_row` in words: "[1, 3, 10]" when every row had the same
    rates, else each set with its rows. None without rates."""
    sets = rates_by_row(report)
    text = lambda rates: f"[{', '.join(f'{r:g}' for r in rates)}]"  # noqa: E731
    if len(sets) <= 1:
        return text(next(iter(sets))) if sets else None
    return "; ".join(f"{text(r)} ({', '.join(rows)})" for r, rows in sets.items())


def seeds_text(report):
    """The seeds a report's table is over, from its runs (not from the last
    command's `--seeds`, which may have extended only some rows): "0, 1, 2",
    and the rows with fewer seeds named with theirs."""
    by_row = {row: sorted(by_seed, key=int) for row, by_seed in report["runs"].items()}
    every = sorted({s for seeds in by_row.values() for s in seeds}, key=int)
    text = ", ".join(every)
    fewer = [f"{row}: {', '.join(seeds)}" for row, seeds in by_row.items() if seeds != every]
    return text + (f" (fewer for {'; '.join(fewer)})" if fewer else "")


def command_lines(report):
    """The Markdown lines naming the command(s) whose runs a report holds."""
    commands = command_history(report)
    if len(commands) == 1:
        return [f"Command: `{commands[0]}`  "]
    lines = ["Commands (in order; each resumed the report of the previous ones):", "", "```"]
    return [*lines, *commands, "```", ""]


def tuning_seeds(args):
    """The seeds of the learning-rate grid when it runs on a subset of the
    seeds (`--tune-seeds`), else None (the grid on every seed).

    Raises:
        ValueError: a tuning seed is not among `--seeds`.
    """
    tune = getattr(args, "tune_seeds", None)
    rates = getattr(args, "learning_rates", None) or []
    if not tune or len(rates) < 2:
        return None
    missing = sorted(set(tune) - set(args.seeds))
    if missing:
        raise ValueError(f"--tune-seeds {missing} are not among --seeds {args.seeds}.")
    return [s for s in args.seeds if s in tune]


def resumable_runs(partial, args):
    """The finished runs of a partial report, if its arguments match `args`
    (beyond `RESUMABLE_CHANGES`).

    Raises:
        ValueError: the partial file was written by another configuration.
    """
    previous = {k: v for k, v in partial.get("args", {}).items() if k not in RESUMABLE_CHANGES}
    current = {k: v for k, v in vars(args).items() if k not in RESUMABLE_CHANGES}
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        raise ValueError(
            f"The partial results were written with other arguments ({', '.join(changed)}); "
            "pass --restart to discard them, or another --tag."
        )
    if "grid" in partial:
        return partial["grid"]
    return partial.get("runs", {})


def progress_line(done, total, elapsed, seconds_per_run):
    """`[#####.....] done/total runs, elapsed, about ... left`."""
    width = 20
    filled = int(width * done / total) if total else width
    text = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs, "
    text += f"{elapsed / 60:.1f} min elapsed"
    if seconds_per_run is not None and done < total:
        text += f", about {(total - done) * seconds_per_run / 60:.1f} min left"
    return text


def run_grid(seeds, rows, run_one, write_partial, on_result=None, describe="", done=None):
    """Runs `run_one(row, seed)` for every seed and row, in that order.

    `run_one` returns `(result, trainer)`; `on_result(row, seed, result,
    trainer)` sees each (e.g. to keep the best trainer), and after each run
    `write_partial(runs)` is called, so that a run cut short leaves every
    finished result behind. Runs already in `done` (`{row: {str(seed):
    result}}`, from a partial file) are kept and skipped. A progress bar
    over the runs with an estimate of the time left (the mean time of the
    runs of this call) is printed before each run. Returns
    `runs[row][str(seed)] = result`.
    """
    runs = {row: dict(by_seed) for row, by_seed in (done or {}).items()}
    for row in rows:
        runs.setdefault(row, {})
    todo = [(seed, row) for seed in seeds for row in rows if str(seed) not in runs[row]]
    total = len(seeds) * len(rows)
    start = time.perf_counter()
    for k, (seed, row) in enumerate(todo):
        finished = total - len(todo) + k
        elapsed = time.perf_counter() - start
        print(progress_line(finished, total, elapsed, elapsed / k if k else None), flush=True)
        print(f"=== {row}, seed {seed}{describe}", flush=True)
        result, trainer = run_one(row, seed)
        print(json.dumps(result), flush=True)
        runs[row][str(seed)] = result
        if on_result is not None:
            on_result(row, seed, result, trainer)
        write_partial(runs)
    print(progress_line(total, total, time.perf_counter() - start, None), flush=True)
    return runs


def add_nested_arguments(parser):
    """The output arguments of the `run_nested` examples: `--out`, `--tag`
    (appended to the report's stem), `--verbose`, `--replot` (see
    `rewrite_nested`) and `--extend` (see `run_nested`)."""
    parser.add_argument("--out", default="results")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument(
        "--replot",
        action="store_true",
        help="recompute the summary and Markdown of the finished report from its runs, no training",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="add this command's runs to the finished report (its runs are kept) instead of "
        "starting it again",
    )


def rewrite_nested(out, stem, update, render):
    """Recompute a finished `run_nested` report from its runs, no training:
    `<out>/<stem>.json` is read, `update(report)` returns the new report
    (e.g. its summary recomputed by newer code), and the `.json` and `.md`
    are rewritten. The runs and commands stay as they were."""
    path = Path(out) / f"{stem}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no finished report to re-render (run the command without --replot first)"
        )
    report = update(json.loads(path.read_text()))
    path.write_text(json.dumps(report, indent=2) + "\n")
    (Path(out) / f"{stem}.md").write_text(render(report))
    return report


def replot(path, table, render):
    """Re-renders the `.md` and `.png` of a result `.json`, no training."""
    path = Path(path)
    table.write(json.loads(path.read_text()), path, render)
