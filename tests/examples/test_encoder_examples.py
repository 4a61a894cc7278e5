"""The encoder examples' grids: learning rates tuned on the first seeds, then
the other seeds at the chosen rate (no training: `run_one` is replaced)."""

import json

import numpy as np
import pytest
from example_scripts import load_example

from cfkeras.reproductions.harness import run_nested


def _run(validation):
    return {"scores": {"validation": validation}, "best_epoch": 1}


def test_choose_learning_rate_compares_rates_on_the_seeds_they_share():
    cat = load_example("cat_few_shot")
    by_lr = {
        "1e-05": {"0": _run(0.60), "1": _run(0.60)},
        # Better on seeds 0 and 1, worse on average once seed 2 counts.
        "3e-05": {"0": _run(0.70), "1": _run(0.70), "2": _run(0.10)},
    }
    assert cat.choose_learning_rate(by_lr) == "3e-05"
    assert cat.choose_learning_rate(by_lr, seeds=[1]) == "3e-05"
    by_lr["1e-05"]["0"] = _run(0.90)
    assert cat.choose_learning_rate(by_lr, seeds=[0]) == "1e-05"
    assert cat.choose_learning_rate(by_lr, seeds=[1]) == "3e-05"
    assert cat.choose_learning_rate({"1e-05": {}}) is None


def test_run_nested_reads_a_lazy_grid_after_the_runs_it_depends_on_and_resumes(tmp_path):
    calls = []

    def run(name, value):
        def go():
            calls.append(name)
            if value is None:
                raise RuntimeError("interrupted")
            return {"scores": {"validation": value}}

        return go

    def grid(runs, fail=False):
        yield ("a", "1"), "a", run("a", 0.2)
        yield ("b", "1"), "b", run("b", 0.8)
        # Decided only once a and b have run.
        best = max(runs, key=lambda k: runs[k]["1"]["scores"]["validation"])
        yield (best, "2"), f"{best} again", run(f"{best}2", None if fail else 0.5)

    command = ["first"]

    def report(runs):
        return {"runs": runs, "command": command[0]}

    with pytest.raises(RuntimeError, match="interrupted"):
        run_nested(tmp_path, "s", lambda runs: grid(runs, fail=True), report, json.dumps)
    assert calls == ["a", "b", "b2"]
    assert json.loads((tmp_path / "s.partial.json").read_text())["runs"] == {
        "a": {"1": {"scores": {"validation": 0.2}}},
        "b": {"1": {"scores": {"validation": 0.8}}},
    }
    command[0] = "second"
    final = run_nested(tmp_path, "s", grid, report, json.dumps)
    assert calls == ["a", "b", "b2", "b2"]  # a and b were not run again
    # The report names both invocations whose runs it holds.
    assert final["commands"] == ["first", "second"]
    assert final["runs"]["b"]["2"] == {"scores": {"validation": 0.5}}
    assert not (tmp_path / "s.partial.json").exists()


def test_run_nested_extends_a_finished_report_only_when_asked(tmp_path):
    calls = []

    def run(name):
        def go():
            calls.append(name)
            return {"scores": {"validation": 0.5}}

        return go

    command = ["small"]

    def report(runs):
        return {"runs": runs, "command": command[0]}

    with pytest.raises(FileNotFoundError, match="no finished report to extend"):
        run_nested(tmp_path, "s", [(("10", "0"), "10", run("10"))], report, json.dumps, extend=True)
    assert calls == []
    run_nested(tmp_path, "s", [(("10", "0"), "10", run("10"))], report, json.dumps)
    command[0] = "large"
    final = run_nested(
        tmp_path, "s", [(("50", "0"), "50", run("50"))], report, json.dumps, extend=True
    )
    assert calls == ["10", "50"]  # the finished 10 was kept, not run again
    assert set(final["runs"]) == {"10", "50"}
    assert final["commands"] == ["small", "large"]
    assert json.loads((tmp_path / "s.json").read_text()) == final
    # Without extend the finished report is started again.
    command[0] = "again"
    final = run_nested(tmp_path, "s", [(("50", "0"), "50", run("50"))], report, json.dumps)
    assert calls == ["10", "50", "50"]
    assert set(final["runs"]) == {"50"}


def test_cat_few_shot_runs_the_rate_grid_on_the_tuning_seeds_only(tmp_path, monkeypatch):
    cat = load_example("cat_few_shot")
    ran = []
    # Validation accuracy by (method, lr): ERM prefers 1e-4, CAT 2e-5.
    quality = {("erm", 2e-5): 0.4, ("erm", 1e-4): 0.5, ("cat", 2e-5): 0.6, ("cat", 1e-4): 0.3}

    def run_one(args, inputs, method, per_class, seed, learning_rate, start_layer):
        ran.append((method, learning_rate, seed))
        value = quality[(method, learning_rate)] + 0.01 * seed
        return {
            "scores": {column: value for column in cat.COLUMNS["snli"]},
            "best_epoch": 3,
            "epochs": 30,
        }

    sizes = {split: (None, np.zeros(4)) for split in ("train", "validation")}
    monkeypatch.setattr(cat, "run_one", run_one)
    monkeypatch.setattr(cat, "load_texts", lambda args: None)
    monkeypatch.setattr(cat, "model_inputs", lambda args, texts, start: sizes)
    argv = "--dataset snli --per-class 10 --methods erm cat --seeds 0 1 2 3"
    argv += f" --learning-rates 2e-5 1e-4 --out {tmp_path}"
    cat.main(argv.split())

    tuning = [(m, lr, s) for m, lr, s in ran if s in (0, 1)]
    assert sorted(tuning) == sorted(
        (m, lr, s) for m in ("erm", "cat") for lr in (2e-5, 1e-4) for s in (0, 1)
    )
    assert sorted(r for r in ran if r[2] in (2, 3)) == sorted(
        [("erm", 1e-4, 2), ("erm", 1e-4, 3), ("cat", 2e-5, 2), ("cat", 2e-5, 3)]
    )
    report = json.loads((tmp_path / "cat_few_shot_snli_cached.json").read_text())
    summary = report["summary"]["10"]
    assert summary["erm"]["learning_rate"] == "0.0001"
    assert summary["cat"]["learning_rate"] == "2e-05"
    assert summary["cat"]["seeds"] == ["0", "1", "2", "3"]
    # Paired with ERM's seeds at ERM's own rate: 0.6 - 0.5 on every seed.
    assert summary["cat"]["test_original"]["diff_mean"] == pytest.approx(10.0)
    # The same 10 points on every seed: no spread, so no test (not p = 0).
    assert summary["cat"]["test_original"]["diff_p"] is None
    assert (
        "[+10.0 ± 0.0, no test (no spread over the seeds)]"
        in (tmp_path / "cat_few_shot_snli_cached.md").read_text()
    )

    # --replot recomputes the summary from the runs, trains nothing.
    runs = report["runs"]["10"]["cat"]["2e-05"]
    for seed, delta in (("0", 0.02), ("1", -0.01), ("2", 0.03)):
        runs[seed]["scores"] = {c: v + delta for c, v in runs[seed]["scores"].items()}
    (tmp_path / "cat_few_shot_snli_cached.json").write_text(json.dumps(report))
    ran.clear()
    cat.main([*argv.split(), "--replot"])
    assert ran == []
    cell = json.loads((tmp_path / "cat_few_shot_snli_cached.json").read_text())["summary"]["10"]
    cell = cell["cat"]["test_revised_premise"]
    d = np.array([12.0, 9.0, 13.0, 10.0])
    assert cell["diff_mean"] == pytest.approx(d.mean())
    assert cell["diff_se"] == pytest.approx(d.std(ddof=1) / 2)
    # Holm over the three test columns, which all moved alike.
    assert cell["diff_p_holm"] == pytest.approx(min(1.0, 3 * cell["diff_p"]))
    assert (
        f"Holm {cell['diff_p_holm']:.2f}" in (tmp_path / "cat_few_shot_snli_cached.md").read_text()
    )

    # --extend adds 50 per class at one rate to the finished report.
    quality.update({("erm", 6e-5): 0.5, ("cat", 6e-5): 0.55})
    ran.clear()
    argv50 = "--dataset snli --per-class 50 --methods erm cat --seeds 0 1 2"
    cat.main([*argv50.split(), "--learning-rates", "6e-5", "--out", str(tmp_path), "--extend"])
    assert sorted(ran) == sorted((m, 6e-5, s) for m in ("erm", "cat") for s in (0, 1, 2))
    report = json.loads((tmp_path / "cat_few_shot_snli_cached.json").read_text())
    assert set(report["summary"]) == {"10", "50"}
    assert report["runs"]["10"]["cat"]["2e-05"]["0"]["scores"] == runs["0"]["scores"]
    assert len(report["commands"]) == 2
    markdown = (tmp_path / "cat_few_shot_snli_cached.md").read_text()
    # Each size says how its rates were chosen (not the last command's grid).
    assert "30 epochs; lr chosen on validation accuracy from 2e-05, 0.0001, every rate run on " in (
        markdown
    )
    assert "seeds 0, 1, the other seeds at the chosen rate." in markdown
    assert "30 epochs; lr 6e-05 for every method and seed (no grid)." in markdown


def test_gs_encoder_pairs_gs_with_its_control_by_seed_with_holm():
    from scipy import stats

    script = load_example("gs_encoder")
    columns = script.COLUMNS["snli"]

    def row(values):  # {column: value per seed}
        return {
            str(k): {"scores": {c: values[c][k] for c in columns}, "best_epoch": 1}
            for k in range(3)
        }

    control = {c: [0.50, 0.52, 0.54] for c in columns}
    gs = {
        "validation": [0.51, 0.53, 0.55],
        "test_original": [0.50, 0.52, 0.54],
        "test_revised_premise": [0.52, 0.53, 0.57],  # +2, +1, +3 points
        "test_revised_hypothesis": [0.51, 0.55, 0.54],  # +1, +3, 0
    }
    runs = {"100": {"control": {"lr=1e-05,gs=0": row(control)}, "gs": {"lr=1e-05,gs=1": row(gs)}}}
    d = script.summarize(runs, "snli")["100"]["difference"]
    assert d["test_revised_premise"]["mean"] == pytest.approx(2.0)
    p = {
        c: stats.ttest_1samp(v, 0).pvalue
        for c, v in (
            ("test_revised_premise", [2.0, 1.0, 3.0]),
            ("test_revised_hypothesis", [1.0, 3.0, 0.0]),
        )
    }
    assert d["test_revised_premise"]["p"] == pytest.approx(p["test_revised_premise"])
    # Holm over the two revised test sets.
    assert d["test_revised_premise"]["p_holm"] == pytest.approx(2 * p["test_revised_premise"])
    assert d["test_revised_hypothesis"]["p_holm"] == pytest.approx(
        max(2 * p["test_revised_premise"], p["test_revised_hypothesis"])
    )
    # +1 point on every seed (validation) and 0 (test original): no spread, no test.
    assert d["validation"]["p"] is None and d["test_original"]["p"] is None
    report = {
        "command": "c",
        "machine": "m",
        "wall_seconds": 1.0,
        "args": {"dataset": "snli", "seeds": [0, 1, 2], "mode": "upper"},
        "summary": {"100": {**script.summarize(runs, "snli")["100"]}},
    }
    markdown = script.render(report)
    assert "+1.00 ± 0.00, no test (no spread over the seeds) |" in markdown
    assert "+2.00 ± 0.58, p 0.074, Holm 0.148 |" in markdown
    assert "## 100 training pairs (seeds 0, 1, 2)" in markdown


def test_gs_encoder_summarizes_the_seeds_of_its_runs_not_of_the_last_command():
    """A report extended by a second command (`--extend --seeds 3 4`) is
    summarized over every seed it holds; a seed only one row has run (a cut
    report) is left out of both rows."""
    script = load_example("gs_encoder")
    columns = script.COLUMNS["snli"]

    def row(offset, seeds):
        return {
            str(k): {"scores": {c: 0.5 + offset + 0.01 * k for c in columns}, "best_epoch": k + 1}
            for k in seeds
        }

    runs = {
        "all": {
            "control": {"lr=0.0001,gs=0": row(0.0, range(6))},
            "gs": {"lr=0.0001,gs=1": row(0.02, range(5))},  # seed 5: control only
        }
    }
    summary = script.summarize(runs, "snli")["all"]
    assert summary["control"]["seeds"] == summary["gs"]["seeds"] == [0, 1, 2, 3, 4]
    assert summary["control"]["best_epochs"] == [1, 2, 3, 4, 5]
    assert summary["control"]["validation"]["mean"] == pytest.approx(52.0)
    d = summary["difference"]["validation"]
    assert d["n"] == 5 and d["mean"] == pytest.approx(2.0)
