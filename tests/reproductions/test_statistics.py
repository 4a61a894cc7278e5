"""`paired_differences`: scipy's paired t-test and a hand-computed Holm."""

import numpy as np
import pytest
from scipy import stats

from cfkeras.reproductions.statistics import paired_differences


def scores(values):
    return {str(s): v for s, v in enumerate(values)}


def test_matches_scipy_paired_t_test_and_holm_by_hand():
    gs = {
        "a": scores([0.80, 0.82, 0.81, 0.85, 0.84]),
        "b": scores([0.70, 0.71, 0.69, 0.72, 0.70]),
        "c": scores([0.60, 0.61, 0.58, 0.66, 0.60]),
        "validation": scores([0.9, 0.9, 0.9, 0.9, 0.9]),
    }
    control = {
        "a": scores([0.78, 0.80, 0.80, 0.82, 0.83]),
        "b": scores([0.70, 0.72, 0.68, 0.71, 0.71]),
        "c": scores([0.59, 0.57, 0.58, 0.60, 0.61]),
        "validation": scores([0.9, 0.9, 0.9, 0.9, 0.9]),
    }
    out = paired_differences(gs, control, primary=("a", "b", "c"))
    p = {}
    for column in "abc":
        x, y = (np.array(list(r[column].values())) for r in (gs, control))
        reference = stats.ttest_rel(x, y)
        d = 100 * (x - y)
        np.testing.assert_allclose(out[column]["mean"], d.mean())
        np.testing.assert_allclose(out[column]["se"], d.std(ddof=1) / np.sqrt(5))
        np.testing.assert_allclose(out[column]["t"], reference.statistic, rtol=1e-9)
        np.testing.assert_allclose(out[column]["p"], reference.pvalue, rtol=1e-9)
        np.testing.assert_allclose(list(out[column]["by_seed"].values()), d)
        p[column] = reference.pvalue
    # Holm by hand: sort, multiply by m, m - 1, ..., keep monotone, cap at 1.
    order = sorted("abc", key=p.get)
    expected, running = {}, 0.0
    for factor, column in zip((3, 2, 1), order):
        running = max(running, min(1.0, factor * p[column]))
        expected[column] = running
    for column in "abc":
        np.testing.assert_allclose(out[column]["p_holm"], expected[column], rtol=1e-9)
        assert out[column]["significant_holm"] == (expected[column] < 0.05)
    assert out["a"]["significant"] == (p["a"] < 0.05)
    # No variation, no difference: no test, not in the Holm family.
    assert out["validation"]["p"] is None and "p_holm" not in out["validation"]


def test_a_constant_difference_gets_no_test():
    # Two seeds whose differences tie exactly (counts over few examples):
    # t is undefined, so no p, no significance, and no place in the Holm family.
    out = paired_differences(
        {"a": {"0": 0.5, "1": 0.6}, "b": scores([0.5, 0.7, 0.6])},
        {"a": {"0": 0.4, "1": 0.5}, "b": scores([0.4, 0.5, 0.6])},
        primary=("a", "b"),
    )
    assert out["a"]["mean"] == pytest.approx(10.0) and out["a"]["se"] == pytest.approx(0.0)
    assert out["a"]["p"] is None and not out["a"]["significant"] and "p_holm" not in out["a"]
    assert out["b"]["p_holm"] == pytest.approx(out["b"]["p"])
    # The same with round-off (sd 8e-15, not 0): 3 of 490 more right on each seed.
    treatment = {"a": {"0": 300 / 490, "1": 301 / 490}}
    control = {"a": {"0": 297 / 490, "1": 298 / 490}}
    out = paired_differences(treatment, control, primary=("a",))
    assert out["a"]["p"] is None and not out["a"]["significant"]


def test_one_seed_gives_the_difference_without_a_test():
    out = paired_differences({"a": {"0": 0.5}}, {"a": {"0": 0.4}}, primary=("a",))
    assert out["a"]["mean"] == pytest.approx(10.0)
    assert out["a"]["se"] is None and out["a"]["p"] is None and not out["a"]["significant"]


def test_only_seeds_present_in_both_rows_are_paired():
    out = paired_differences({"a": scores([0.5, 0.6, 0.7])}, {"a": {"0": 0.4, "2": 0.5}})
    assert out["a"]["by_seed"] == pytest.approx({"0": 10.0, "2": 20.0})
    assert out["a"]["n"] == 2


def test_scores_by_column_leaves_out_the_runs_without_a_column():
    from cfkeras.reproductions.statistics import scores_by_column

    by_seed = {"0": {"scores": {"a": 0.5, "b": 0.25}}, "1": {"scores": {"a": 0.75}}}
    assert scores_by_column(by_seed, ["a", "b", "c"]) == {
        "a": {"0": 0.5, "1": 0.75},
        "b": {"0": 0.25},
        "c": {},
    }


def test_difference_text_writes_mean_se_p_holm_and_the_star():
    from cfkeras.reproductions.statistics import difference_text

    d = paired_differences(
        {"a": {0: 0.52, 1: 0.53, 2: 0.57}, "b": {0: 0.50, 1: 0.50, 2: 0.51}},
        {"a": {0: 0.50, 1: 0.52, 2: 0.54}, "b": {0: 0.50, 1: 0.52, 2: 0.54}},
        primary=["a"],
    )
    # a: +2, +1, +3 points; mean 2, se 1/sqrt(3); one primary column: Holm = p.
    assert difference_text(d["a"]) == f"+2.00 ± 0.58, p {d['a']['p']:.3f}, Holm {d['a']['p']:.3f}"
    assert difference_text(d["a"], digits=1).startswith("+2.0 ± 0.6, p ")
    # b: 0, -2, -3 points, not primary: the raw p, no Holm.
    assert difference_text(d["b"]) == f"-1.67 ± 0.88, p {d['b']['p']:.3f}"
    # The star: p (or Holm's p) below the level.
    assert difference_text({"mean": 3.0, "se": 0.1, "p": 0.001, "p_holm": 0.003}).endswith(
        ", Holm 0.003 *"
    )
    assert not difference_text({"mean": 3.0, "se": 0.1, "p": 0.001, "p_holm": 0.06}).endswith("*")
    assert difference_text({"mean": 3.0, "se": 0.1, "p": 0.01}).endswith("p 0.010 *")
    assert difference_text({"mean": 1.0, "se": None, "p": None}) == "+1.00, no test (one seed)"
    assert difference_text({"mean": 1.0, "se": 0.0, "p": None}) == (
        "+1.00 ± 0.00, no test (no spread over the seeds)"
    )
