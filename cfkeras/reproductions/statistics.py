"""Paired statistics of two rows trained on the same seeds: GS − its control.

`paired_differences` takes the per-seed scores of a treatment row and of its
step-matched control and returns, per column, the differences by seed, their
mean, standard error, a two-sided paired t-test, and the Holm correction over
the primary columns; `scores_by_column` makes its inputs from a row's runs;
`difference_text` writes one of its columns the way every report does.
"""

import math

import numpy as np


def scores_by_column(by_seed, columns):
    """`{column: {seed: score}}`, the input of `paired_differences`, from a
    row's runs `{seed: {"scores": {column: score}}}`; a run without a column
    is left out of it."""
    return {
        column: {s: r["scores"][column] for s, r in by_seed.items() if column in r["scores"]}
        for column in columns
    }


def paired_differences(treatment, control, primary=(), alpha=0.05, scale=100.0):
    """GS − control by seed, per column, with a paired t-test and Holm.

    Formula, per column, with `d_s = scale * (treatment_s - control_s)` over
    the `n` seeds present in both rows:

    ```
    mean = sum_s d_s / n,   sd = sqrt(sum_s (d_s - mean)^2 / (n - 1))
    se = sd / sqrt(n),      t = mean / se   (n - 1 degrees of freedom)
    p = 2 * P(T_{n-1} > |t|)                 (two-sided)
    ```

    Holm over the `m` primary columns with a p-value, sorted by p
    ascending: `p_holm_(i) = max_{k <= i} min(1, (m - k + 1) p_(k))`; a
    column is significant when its (Holm-corrected, if primary) p is below
    `alpha`. With one seed, or no variation, there is no test (`p` None):
    a constant difference over a few seeds (scores are counts over a few
    hundred examples, so two seeds can tie exactly) is no evidence of
    certainty, and t is undefined (se = 0); such a column is left out of
    the Holm family.

    Args:
        treatment: `{column: {seed: score}}` of the treatment row.
        control: the same of its control.
        primary: the columns of the Holm family.
        alpha: the level of the tests.
        scale: multiplies the differences (100: scores in [0, 1] to points).

    Returns:
        `{column: {"by_seed": {seed: d}, "n", "mean", "se", "t", "p",
        "significant", and for primary columns "p_holm",
        "significant_holm"}}`.
    """
    from scipy import stats

    out = {}
    for column, by_seed in treatment.items():
        seeds = sorted(set(by_seed) & set(control.get(column, {})), key=str)
        if not seeds:
            continue
        d = np.array([scale * (by_seed[s] - control[column][s]) for s in seeds], np.float64)
        n = len(d)
        mean = float(d.mean())
        se = t = p = None
        if n > 1:
            sd = float(d.std(ddof=1))
            se = sd / math.sqrt(n)
            # Round-off between two equal counts (e.g. 419/490 − 415/490 on
            # two seeds) can leave sd ~1e-15 instead of 0: that is no variation.
            if sd > 1e-9 * max(1.0, abs(mean)):
                t = mean / se
                p = float(2 * stats.t.sf(abs(t), n - 1))
        out[column] = {
            "by_seed": {str(s): float(v) for s, v in zip(seeds, d)},
            "n": n,
            "mean": mean,
            "se": se,
            "t": t,
            "p": p,
            "significant": p is not None and p < alpha,
        }
    family = sorted(
        (c for c in primary if c in out and out[c]["p"] is not None), key=lambda c: out[c]["p"]
    )
    running = 0.0
    for rank, column in enumerate(family):
        running = max(running, min(1.0, (len(family) - rank) * out[column]["p"]))
        out[column]["p_holm"] = running
        out[column]["significant_holm"] = running < alpha
    return out


def difference_text(d, digits=2, alpha=0.05):
    """One paired difference as every report writes it:
    `+1.23 ± 0.45, p 0.031, Holm 0.093`, `*` when significant (Holm-corrected
    for a primary column), `no test (...)` when there is none (one seed, or
    no spread over the seeds).

    Args:
        d: a column of `paired_differences` (`mean`, `se`, `p`, and
            `p_holm` for a primary column).
        digits: decimals of the mean and its standard error (p-values: 3).
        alpha: the level of the star.
    """
    text = f"{d['mean']:+.{digits}f}"
    if d.get("se") is None:
        return text + ", no test (one seed)"
    text += f" ± {d['se']:.{digits}f}"
    if d.get("p") is None:
        return text + ", no test (no spread over the seeds)"
    text += f", p {d['p']:.3f}"
    if d.get("p_holm") is not None:
        text += f", Holm {d['p_holm']:.3f}"
    reference = d["p"] if d.get("p_holm") is None else d["p_holm"]
    return text + (" *" if reference < alpha else "")
