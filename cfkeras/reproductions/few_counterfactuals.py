"""Few counterfactuals, many originals: IMDb accuracy against k.

The 1 707 CAD training originals plus the counterfactuals of k of them
(drawn per seed), for every k of `--counterfactuals` (default 50 200 800
all): one `imdb_table3 --counterfactuals k` run a k (rows augmentation,
control, + GS; originals only once, at the first k, as it does not depend
on k), each with its own result files `<out>/imdb_table3_[<tag>_]k<k>.*`
(resumable: finished runs are skipped); k = all is the full table
`<out>/imdb_table3[_<tag>].*` (`cfkeras-reproduce imdb` with the same tag,
the same data and batches), run only if it lacks a row or seed. Then the
curves:
`<out>/imdb_few_counterfactuals[_<tag>].{json,md,png}` with mean ± std per
row and column against k, and GS − control by seed (mean ± standard error,
paired t-test, Holm over the primary columns) per k.

Every batch of the control and + GS rows mixes p of the k pairs with single
originals, the same batches in both (`cfkeras.Pairs.with_singles`); λ is
not rescaled with the share of pairs (see `imdb_table3`).

    cfkeras-reproduce imdb-few --counterfactuals 50 200 800 all --seeds 0 1 2 3 4 \\
        --ood-dir ../shared/data/ood
"""

import argparse
import json
from pathlib import Path

import numpy as np

from cfkeras.reproductions import harness, imdb_table3
from cfkeras.reproductions.statistics import difference_text

ROWS = ("original", "augmentation", "control", "gs")


def parse_args(argv=None):
    """`(args, rest)`: this command's arguments and those passed to `imdb_table3`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counterfactuals", nargs="+", default=["50", "200", "800", "all"])
    parser.add_argument("--out", default="results")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--replot", action="store_true", help="only re-render the curves")
    args, rest = parser.parse_known_args(argv)
    if "--rows" in rest or "--counterfactuals" in rest:
        parser.error("the rows are fixed here: original, augmentation, control, gs")
    for k in args.counterfactuals:
        if k != "all" and not (k.isdigit() and int(k) > 0):
            parser.error(f"--counterfactuals takes positive integers or 'all'; not {k!r}")
    return args, rest


def stem(args, k):
    """The result files of k: `imdb_table3_[<tag>_]k<k>`, and for k = all
    those of the full table, `imdb_table3[_<tag>]` (`cfkeras-reproduce imdb`
    with the same tag): with every counterfactual the training data and
    batches are the full table's, so its runs are not repeated."""
    base = "imdb_table3" + (f"_{args.tag}" if args.tag else "")
    return base if k == "all" else f"{base}_k{k}"


def finished(path, rows, seeds):
    """Whether the report at `path` holds every row for every seed."""
    if not path.exists():
        return False
    runs = json.loads(path.read_text()).get("runs", {})
    return all(str(s) in runs.get(row, {}) for row in rows for s in seeds)


def run(args, rest):
    """One `imdb_table3` run a k (each resumes from its own files: finished
    runs are skipped; k = all reuses the full table when it holds the rows
    for every seed)."""
    seeds = imdb_table3.parse_args(rest).seeds
    for index, k in enumerate(args.counterfactuals):
        rows = list(ROWS) if index == 0 else list(ROWS[1:])
        name = stem(args, k)
        print(f"=== k = {k} ({index + 1}/{len(args.counterfactuals)})", flush=True)
        if k == "all" and finished(Path(args.out) / f"{name}.json", rows, seeds):
            print(f"k = all: the full table {name}.json has these runs", flush=True)
            continue
        tag = name[len("imdb_table3_") :] if name != "imdb_table3" else None
        argv = [*rest, "--out", args.out, "--rows", *rows]
        argv += ["--tag", tag] if tag else []
        argv += [] if k == "all" else ["--counterfactuals", k]
        program = harness.PROGRAM
        harness.PROGRAM = ["cfkeras-reproduce", "imdb"] if program else None
        try:
            imdb_table3.main(argv)
        finally:
            harness.PROGRAM = program


def collect(args):
    """The curves report from the per-k result files."""
    reports = {}
    for k in args.counterfactuals:
        path = Path(args.out) / f"{stem(args, k)}.json"
        if path.exists():
            reports[k] = json.loads(path.read_text())
    if not reports:
        raise FileNotFoundError(f"no result file of {args.counterfactuals} in {args.out}")
    original = next(
        (r["summary"]["original"] for r in reports.values() if "original" in r["summary"]), None
    )
    curves = {}
    for k, report in reports.items():
        summary = dict(report["summary"])
        if original is not None:
            summary.setdefault("original", original)
        curves[k] = {
            "summary": summary,
            "differences": report.get("differences", {}).get("gs"),
            "chosen_learning_rate": report.get("chosen_learning_rate", {}),
            "convergence": report.get("convergence", {}),
            "train_pairs_k": k,
        }
    first = next(iter(reports.values()))
    commands = []
    for report in reports.values():
        commands = harness.extend_history(commands, harness.command_history(report))
    return {
        "command": first["command"],
        "commands": commands,
        "machine": first["machine"],
        "counterfactuals": list(reports),
        "primary": list(imdb_table3.PRIMARY),
        "wall_seconds": round(sum(r["wall_seconds"] for r in reports.values()), 1),
        "by_k": curves,
    }


def render(report):
    """The Markdown of the curves report."""
    columns = imdb_table3.COLUMNS
    lines = [
        "# IMDb: few counterfactuals, many originals",
        "",
        *harness.command_lines(report),
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min "
        "(sum over k).",
        "",
        "The 1 707 training originals plus the counterfactuals of k of them (drawn per "
        "seed). Control and + GS train on the same batches mixing pairs and single "
        "originals (λ not rescaled). Accuracy %, mean ± std over seeds.",
        "",
        "| k | row | " + " | ".join(columns) + " | lr | converged |",
        "|---|---|" + "---|" * (len(columns) + 2),
    ]
    for k, entry in report["by_k"].items():
        for row in ROWS:
            cells = entry["summary"].get(row)
            if cells is None:
                continue
            text = [
                f"{cells[c]['mean']:.1f} ± {cells[c]['std']:.1f}" if c in cells else "—"
                for c in columns
            ]
            rate = entry["chosen_learning_rate"].get(row)
            converged = entry["convergence"].get(row, {}).get("converged", True)
            rate = "—" if rate is None else f"{rate:g}"
            lines.append(
                f"| {k} | {imdb_table3.LABELS[row]} | "
                + " | ".join(text)
                + f" | {rate} | {'yes' if converged else '**no**'} |"
            )
    lines += [
        "",
        "## + GS − control by seed (points; mean ± s.e., paired t-test p, Holm over "
        f"{', '.join(report['primary'])}; `*`: significant at 5 %, after Holm there)",
        "",
        "| k | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for k, entry in report["by_k"].items():
        d = (entry["differences"] or {}).get("columns", {})
        cells = []
        for c in columns:
            if c not in d:
                cells.append("—")
                continue
            cells.append(difference_text(d[c]))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report, path):
    """Accuracy against k per row (one panel a column), and GS − control."""
    plt = harness.Table._pyplot()
    columns = [c for c in imdb_table3.COLUMNS if c != "validation"]
    ks = report["counterfactuals"]
    xs = np.arange(len(ks))
    fig, axes = plt.subplots(1, len(columns) + 1, figsize=(3.2 * (len(columns) + 1), 3.6))
    for ax, column in zip(axes, columns):
        for row in ROWS:
            means = [
                report["by_k"][k]["summary"].get(row, {}).get(column, {}).get("mean", np.nan)
                for k in ks
            ]
            stds = [
                report["by_k"][k]["summary"].get(row, {}).get(column, {}).get("std", 0.0)
                for k in ks
            ]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=2, label=row)
        ax.set_xticks(xs, ks)
        ax.set_xlabel("k counterfactuals")
        ax.set_title(column, fontsize=9)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for column in report["primary"]:
        d = [(report["by_k"][k]["differences"] or {}).get("columns", {}).get(column) for k in ks]
        means = [np.nan if v is None else v["mean"] for v in d]
        errors = [0.0 if v is None or v["se"] is None else v["se"] for v in d]
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=2, label=column)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, ks)
    ax.set_xlabel("k counterfactuals")
    ax.set_title("+ GS − control (mean ± s.e.)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    args, rest = parse_args(argv)
    if not args.replot:
        run(args, rest)
    report = collect(args)
    out = Path(args.out) / ("imdb_few_counterfactuals" + (f"_{args.tag}" if args.tag else ""))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    markdown = render(report) + f"\n![curves]({out.with_suffix('.png').name})\n"
    out.with_suffix(".md").write_text(markdown)
    plot(report, out.with_suffix(".png"))
    print(markdown)
    return report
