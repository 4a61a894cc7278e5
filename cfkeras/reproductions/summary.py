"""One answer across every committed comparison: + GS − its step-matched control.

Reads the result files of the reproductions in `--results` (those present:
a missing one is listed, not an error) and writes
`<out>.{json,md,png}`: per setting and primary column, the paired
difference GS − control by seed (points), its mean, standard error, 95 %
confidence interval (t with n − 1 degrees of freedom), p and Holm p as the
source report computed them, and a forest plot of them all.

    cfkeras-reproduce summary --results results --out results/evidence_summary

Nothing is trained: every number comes from a committed report, whose
command is in it (`sources` of the output names each file).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from cfkeras.reproductions import harness
from cfkeras.reproductions.statistics import paired_differences, scores_by_column

# (file, dataset label, model label): the reports made by `Table.run`
# (`differences` keyed by GS row).
TABLE_REPORTS = (
    ("imdb_table3_evidence.json", "IMDb", "paper's BoE ensemble, all 1,707 pairs"),
    ("snli_table3_evidence.json", "SNLI", "paper's MLP ensemble, all pairs"),
    # The ground-truth row and its control again with 150 epochs (at 100 the
    # row had its best epoch in the last tenth for most seeds).
    (
        "snli_table3_evidence_epochs150.json",
        "SNLI",
        "paper's MLP ensemble, all pairs, 150 epochs",
    ),
)
FEW = ("imdb_few_counterfactuals_evidence.json", "IMDb", "paper's BoE ensemble")
DIGITS = ("digits_table2.json", "digit canvases (mAP)", "multi-label CNN features")
# `examples/gs_encoder.py`'s reports, by mode (`gs_encoder_<mode>_<dataset>`;
# the fine-tuned modes' all-pairs runs have their own, `..._all`).
ENCODERS = tuple(
    (f"gs_encoder_{mode}_{dataset.lower()}{tag}.json", dataset, setting)
    for mode, setting, tags in (
        ("frozen", "frozen MiniLM + MLP head", ("",)),
        ("upper", "MiniLM layers 4–5 + MLP head fine-tuned", ("", "_all")),
        ("full", "MiniLM fully fine-tuned + MLP head", ("", "_all")),
    )
    for dataset in ("IMDb", "SNLI")
    for tag in tags
)
# Columns shown (the primary columns of each report, i.e. its Holm family).
IMDB_COLUMNS = ("test_edited", "amazon", "twitter", "yelp")
SNLI_COLUMNS = ("test_revised_premise", "test_revised_hypothesis")
DIGITS_COLUMNS = ("test_edited", "test_hard_edited")
# GS rows reported (treatment label); others in the reports are left out.
GS_ROWS = {
    "gs": "+ GS",
    "gs_ground_truth": "+ GS, ground-truth class",
    "gs_sum": "+ GS (sum)",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="folder of the result files")
    parser.add_argument("--out", default="results/evidence_summary", help="output stem")
    return parser.parse_args(argv)


def interval(mean, se, n, level=0.95):
    """The two-sided t confidence interval of a mean difference (None if
    it has no standard error)."""
    from scipy import stats

    if se is None or n < 2:
        return None
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return [mean - half, mean + half]


def entry(dataset, setting, comparison, column, d, source, converged=None):
    """One row of the summary from a paired-difference cell `d`; `converged`:
    False when the GS row or its control is not converged by its report's
    rule, None when the report does not say (early stopping, or no flag)."""
    by_seed = d.get("by_seed")
    n = d.get("n") or (len(by_seed) if by_seed is not None else 0)
    return {
        "dataset": dataset,
        "setting": setting,
        "comparison": comparison,
        "column": column,
        "n": n,
        "mean": d["mean"],
        "se": d.get("se"),
        "ci95": interval(d["mean"], d.get("se"), n),
        "p": d.get("p"),
        "p_holm": d.get("p_holm"),
        "source": source,
        "converged": converged,
    }


def collect(results):
    """`(entries, sources, missing)` from the files in `results`."""
    results = Path(results)
    entries, sources, missing = [], [], []

    def load(name):
        path = results / name
        if not path.is_file():
            missing.append(name)
            return None
        report = json.loads(path.read_text())
        sources.append({"file": name, "commands": harness.command_history(report)})
        return report

    for name, dataset, setting in TABLE_REPORTS:
        report = load(name)
        if report is None:
            continue
        columns = IMDB_COLUMNS if dataset == "IMDb" else SNLI_COLUMNS
        convergence = report.get("convergence", {})
        for row, label in GS_ROWS.items():
            d = report.get("differences", {}).get(row)
            if d is None:
                continue
            flags = [convergence[r]["converged"] for r in (row, d["control"]) if r in convergence]
            converged = all(flags) if flags else None
            for column in columns:
                if column in d["columns"]:
                    comparison = f"{label} − {d['control']}"
                    cell = d["columns"][column]
                    entries.append(
                        entry(dataset, setting, comparison, column, cell, name, converged)
                    )

    report = load(FEW[0])
    if report is not None:
        for k, by_k in report["by_k"].items():
            if k == "all" or by_k.get("differences") is None:
                continue  # k = all is the full table, above
            for column in IMDB_COLUMNS:
                d = by_k["differences"]["columns"].get(column)
                if d is not None:
                    setting = f"{FEW[2]}, 1,707 originals + {k} pairs"
                    entries.append(entry(FEW[1], setting, "+ GS − control", column, d, FEW[0]))

    report = load(DIGITS[0])
    if report is not None:
        runs = report["runs"]
        d = paired_differences(
            scores_by_column(runs["gs_sum"], DIGITS_COLUMNS),
            scores_by_column(runs["augmentation"], DIGITS_COLUMNS),
            primary=DIGITS_COLUMNS,
        )
        for column in DIGITS_COLUMNS:
            entries.append(
                entry(DIGITS[1], DIGITS[2], "+ GS (sum) − control", column, d[column], DIGITS[0])
            )

    expected = {name for name, _, _ in ENCODERS}
    # Longest stem first: `gs_encoder_upper_snli_all_epochs6.json` is the
    # all-pairs report tagged `epochs6`, not the 100-pair one tagged `all_epochs6`.
    by_stem = sorted(ENCODERS, key=lambda encoder: -len(encoder[0]))
    tagged = []  # other runs of the same command, e.g. `--epochs 16 --tag epochs16`
    for path in sorted(results.glob("gs_encoder_*_*_*.json")):
        if path.name.endswith(harness.PARTIAL_SUFFIX) or path.name in expected:
            continue  # a partial file is a running or cut command's runs so far
        for name, dataset, setting in by_stem:
            stem = name.removesuffix(".json")
            if path.name.startswith(stem + "_"):
                tag = path.stem[len(stem) + 1 :]
                tagged.append((path.name, dataset, f"{setting}, {tag}"))
                break
    for name, dataset, setting in (*ENCODERS, *tagged):
        report = load(name)
        if report is None:
            continue
        columns = IMDB_COLUMNS if dataset == "IMDb" else SNLI_COLUMNS
        epochs = report.get("args", {}).get("epochs")
        for pairs, summary in report["summary"].items():
            converged = None
            if epochs:
                converged = not any(
                    harness.late_majority(summary[row]["best_epochs"], epochs)
                    for row in ("control", "gs")
                    if row in summary and "best_epochs" in summary[row]
                )
            for column in columns:
                d = summary["difference"].get(column)
                if d is not None:
                    label = f"{setting}, {pairs} pairs"
                    entries.append(
                        entry(dataset, label, "+ GS − control", column, d, name, converged)
                    )
    return entries, sources, missing


def verdict(entries):
    """Counts of the differences: significant after Holm, up or down."""
    up = [e for e in entries if e["p_holm"] is not None and e["p_holm"] < 0.05 and e["mean"] > 0]
    down = [e for e in entries if e["p_holm"] is not None and e["p_holm"] < 0.05 and e["mean"] < 0]
    return {
        "differences": len(entries),
        "significant_gain": len(up),
        "significant_loss": len(down),
        # Of the significant ones, those whose GS row or control is not converged.
        "significant_not_converged": sum(e["converged"] is False for e in up + down),
    }


CONVERGED = {True: "yes", False: "**no**", None: "—"}


def fmt(value, digits=2, sign=True):
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def render(report):
    v = report["verdict"]
    lines = [
        "# Does gradient supervision beat augmentation? Every paired comparison",
        "",
        "Command: `cfkeras-reproduce summary " + " ".join(report["argv"]) + "` (no training: "
        "it reads the committed reports below, each with its own command).",
        "",
        "+ GS − its step-matched control (the same pair batches, initial weights and seeds, "
        "λ = 0), by seed, in points (accuracy %, or mAP for the digit canvases): mean, "
        "standard error, 95 % t interval, p (paired t-test) and Holm p over each report's "
        "primary columns.",
        "",
        f"**{v['differences']} differences; significant after Holm: "
        f"{v['significant_gain']} in favour of GS, {v['significant_loss']} against it"
        + (
            f" ({v['significant_not_converged']} of these from a comparison whose GS row or "
            "control is not converged)"
            if v.get("significant_not_converged")
            else ""
        )
        + ".**",
        "",
        "Converged: **no** when the GS row or its control has its best epoch in the last "
        f"{100 * harness.LATE_SHARE:.0f} % of the epochs for most seeds (its report flags "
        "it: not an answer until re-run longer); — when the report does not say (early "
        "stopping, or an older report without the flag).",
        "",
        "| dataset | setting | comparison | column | n | mean ± s.e. | 95 % CI | p | Holm p "
        "| converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["entries"]:
        ci = e["ci95"]
        ci = "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
        se = "" if e["se"] is None else f" ± {e['se']:.2f}"
        lines.append(
            f"| {e['dataset']} | {e['setting']} | {e['comparison']} | {e['column']} | {e['n']} "
            f"| {fmt(e['mean'])}{se} | {ci} | {fmt(e['p'], 3, False)} "
            f"| {fmt(e['p_holm'], 3, False)} | {CONVERGED[e.get('converged')]} |"
        )
    lines += ["", "Sources:", ""]
    for source in report["sources"]:
        commands = source["commands"]
        if len(commands) == 1:
            lines.append(f"- `{source['file']}`: `{commands[0]}`")
        else:
            lines.append(f"- `{source['file']}`, in order:")
            lines += [f"  - `{command}`" for command in commands]
    if report["missing"]:
        lines += ["", "Not yet run (absent): " + ", ".join(f"`{m}`" for m in report["missing"])]
    return "\n".join(lines) + "\n"


def plot(report, path):
    """A forest plot: one line a difference, 95 % interval, grouped by setting."""
    from cfkeras.reproductions.harness import Table

    plt = Table._pyplot()
    entries = report["entries"]
    if not entries:
        return
    labels = [
        f"{e['dataset']} · {e['setting']} · {e['comparison']} · {e['column']}" for e in entries
    ]
    ys = np.arange(len(entries))[::-1]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(entries) + 1.2))
    for y, e in zip(ys, entries):
        ci = e["ci95"]
        significant = e["p_holm"] is not None and e["p_holm"] < 0.05
        color = "black" if not significant else ("tab:green" if e["mean"] > 0 else "tab:red")
        if ci is not None:
            ax.plot(ci, [y, y], color=color, linewidth=1.5)
        ax.plot([e["mean"]], [y], "o", color=color, markersize=4)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel("+ GS − control, points (mean and 95 % interval over seeds)")
    ax.set_title(
        "Green / red: significant gain / loss after Holm; black: not significant", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    argv = [] if argv is None else list(argv)
    args = parse_args(argv)
    entries, sources, missing = collect(args.results)
    for name in missing:
        print(f"absent, skipped: {name}")
    report = {
        "argv": argv,
        "sources": sources,
        "missing": missing,
        "verdict": verdict(entries),
        "entries": entries,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report) + f"\n![forest plot]({out.name}.png)\n"
    out.with_suffix(".md").write_text(markdown)
    plot(report, out.with_suffix(".png"))
    print(markdown)
    return report


if __name__ == "__main__":  # pragma: no cover
    main()
