"""The reproductions' harness without training: resumption from the partial
file, the learning-rate choice on validation, the convergence flag, the
paired differences in the report, and the console entry point."""

import argparse
import json
import re
from pathlib import Path

import pytest

from cfkeras.reproductions import cli, harness

TABLE = harness.Table(
    ("control", "gs"),
    ("validation", "test"),
    {"control": "control", "gs": "+ GS"},
    {"gs": (80.0, None)},
    controls={"gs": "control"},
    primary=("test",),
)


def fake_run(calls, fail_after=None):
    """A `run_one` whose scores depend on row, seed and rate; it raises (a
    run cut short) once `fail_after` runs have finished."""

    def run_one(row, seed, learning_rate=None):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt
        calls.append((row, seed, learning_rate))
        bonus = 0.1 + 0.005 * seed if row == "gs" else 0.0  # GS − control: 10, 10.5, 11 points
        # The validation accuracy peaks at rate 1 for the control and 3 for GS.
        best = 3.0 if row == "gs" else 1.0
        validation = 0.5 - 0.01 * abs(learning_rate - best) + 0.001 * seed
        curve = [0.4, 0.5, 0.6, 0.55] if row == "gs" else [0.4, 0.5, 0.55, 0.6]
        return {
            "scores": {"validation": validation, "test": 0.6 + bonus + 0.01 * seed},
            "best_epoch": 3 if row == "gs" else 4,
            "history": {"val_accuracy": curve, "val_main_loss": [1.0, 0.9, 0.8, 0.7]},
        }, None

    return run_one


def args_for(tmp_path, **changes):
    values = dict(
        seeds=[0, 1, 2],
        rows=["control", "gs"],
        learning_rates=[1.0, 3.0],
        epochs=4,
        out=str(tmp_path),
        tag=None,
        restart=False,
        sequence_length=8,
    )
    values.update(changes)
    return argparse.Namespace(**values)


def render(report):
    return TABLE.markdown(report, "fake"), "fake"


def test_a_run_cut_short_resumes_from_its_partial_file(tmp_path):
    args = args_for(tmp_path)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        TABLE.run(args, [], "fake", fake_run(calls, fail_after=5), render, 0.0)
    partial = json.loads((tmp_path / "fake.partial.json").read_text())
    assert sum(map(len, partial["grid"].values())) == 5
    # The same command again: only the 12 - 5 missing runs, none twice.
    again = []
    report = TABLE.run(args, [], "fake", fake_run(again), render, 0.0)
    assert len(again) == 7 and not set(again) & set(calls)
    assert not (tmp_path / "fake.partial.json").exists()
    assert sum(map(len, report["grid"].values())) == 12
    # Each row's rate chosen on validation; the chosen runs are reported.
    assert report["chosen_learning_rate"] == {"control": 1.0, "gs": 3.0}
    assert report["runs"]["gs"] == report["grid"]["gs@lr=3"]
    # The mean curves, the convergence flag (best epoch 4 of 4: the last 10 %).
    assert report["curves"]["gs"]["val_accuracy"] == pytest.approx([0.4, 0.5, 0.6, 0.55])
    assert report["convergence"]["control"]["converged"] is False
    assert report["convergence"]["gs"]["converged"] is True
    difference = report["differences"]["gs"]["columns"]["test"]
    assert difference["mean"] == pytest.approx(10.5) and "p_holm" in difference
    markdown = (tmp_path / "fake.md").read_text()
    assert "**not converged**" in markdown and "Holm" in markdown
    for figure in ("fake.png", "fake_curves.png", "fake_differences.png"):
        assert (tmp_path / figure).stat().st_size > 0
    # A finished report is extended the same way: a new seed runs alone.
    more = []
    report = TABLE.run(
        args_for(tmp_path, seeds=[0, 1, 2, 3]), [], "fake", fake_run(more), render, 0
    )
    assert sorted(more) == [
        ("control", 3, 1.0),
        ("control", 3, 3.0),
        ("gs", 3, 1.0),
        ("gs", 3, 3.0),
    ]
    assert set(report["runs"]["gs"]) == {"0", "1", "2", "3"}
    # The same finished command again: no run, the report re-rendered.
    none = []
    TABLE.run(args_for(tmp_path, seeds=[0, 1, 2, 3]), [], "fake", fake_run(none), render, 0)
    assert none == [] and (tmp_path / "fake.json").exists()


def test_early_stopped_runs_are_judged_on_the_epochs_they_ran():
    # Best epoch / epochs run: 70/100 is fine, 95/100 and 10/10 lie in the last tenth.
    runs = {
        "control": {
            "0": {"best_epoch": 70, "epochs_run": 100},
            "1": {"best_epoch": 95, "epochs_run": 100},
            "2": {"best_epoch": 10, "epochs_run": 10},
        },
        "gs": {"0": {"best_epoch": 40, "epochs_run": 70}, "1": {"best_epoch": 50}},
    }
    convergence = TABLE.convergence(runs, epochs=300)
    assert convergence["control"]["late_runs"] == ["1", "2"]
    assert convergence["control"]["converged"] is False  # 2 of 3 seeds
    assert convergence["gs"]["late_runs"] == [] and convergence["gs"]["epochs_run"] == [70, 300]
    report = {
        "command": "c",
        "machine": "m",
        "wall_seconds": 1.0,
        "runs": {row: {s: {**r, "scores": {}} for s, r in by.items()} for row, by in runs.items()},
        "summary": {"control": {}, "gs": {}},
        "convergence": convergence,
    }
    markdown = TABLE.markdown(report, "h")
    assert (
        "70/100, 95/100, 10/10 **best epoch in the last tenth of the epochs run: seeds 1, 2**"
        in (markdown)
    )
    assert "40/70, 50/? |" in markdown


def test_resuming_with_other_arguments_is_refused_unless_restarted(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        TABLE.run(args_for(tmp_path), [], "fake", fake_run(calls, 2), render, 0.0)
    with pytest.raises(ValueError, match="epochs"):
        TABLE.run(args_for(tmp_path, epochs=8), [], "fake", fake_run([]), render, 0.0)
    fresh = []
    TABLE.run(args_for(tmp_path, epochs=8, restart=True), [], "fake", fake_run(fresh), render, 0.0)
    assert len(fresh) == 12


def test_progress_line_estimates_the_time_left():
    line = harness.progress_line(3, 12, 180.0, 60.0)
    assert line.startswith("[#####...............] 3/12 runs") and "about 9.0 min left" in line


def test_console_entry_point_dispatches_to_the_reproductions(monkeypatch, capsys):
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert re.search(r"cfkeras-reproduce = cfkeras\.reproductions\.cli:main", setup)
    seen = []
    from cfkeras.reproductions import snli_table3

    monkeypatch.setattr(snli_table3, "main", lambda argv: seen.append((argv, harness.PROGRAM)))
    assert cli.main(["snli", "--seeds", "0"]) == 0
    assert seen == [(["--seeds", "0"], ["cfkeras-reproduce", "snli"])]
    assert harness.PROGRAM is None
    assert cli.main(["--help"]) == 0 and "imdb-few" in capsys.readouterr().out
    assert cli.main(["digits"]) == 2


def test_the_grid_runs_on_the_tuning_seeds_and_the_other_seeds_at_the_chosen_rate(tmp_path):
    args = args_for(tmp_path, seeds=[0, 1, 2, 3], tune_seeds=[1, 0])
    calls = []
    with pytest.raises(KeyboardInterrupt):
        TABLE.run(args, [], "fake", fake_run(calls, fail_after=9), render, 0.0)
    # The whole grid on seeds 0 and 1 first (8 runs), then seed 2 at the chosen rates.
    assert sorted(calls[:8]) == sorted(
        (row, seed, rate) for row in ("control", "gs") for seed in (0, 1) for rate in (1.0, 3.0)
    )
    assert calls[8] == ("control", 2, 1.0)
    again = []
    report = TABLE.run(args, [], "fake", fake_run(again), render, 0.0)
    assert again == [("gs", 2, 3.0), ("control", 3, 1.0), ("gs", 3, 3.0)]
    assert report["chosen_learning_rate"] == {"control": 1.0, "gs": 3.0}
    assert set(report["runs"]["gs"]) == {"0", "1", "2", "3"}
    assert set(report["grid"]["gs@lr=1"]) == {"0", "1"}
    assert set(report["differences"]["gs"]["columns"]["test"]["by_seed"]) == {"0", "1", "2", "3"}
    assert "mean over the tuning seeds [1, 0]" in (tmp_path / "fake.md").read_text()


def test_tuning_seeds_must_be_among_the_seeds(tmp_path):
    args = args_for(tmp_path, tune_seeds=[0, 7])
    with pytest.raises(ValueError, match=r"--tune-seeds \[7\] are not among --seeds"):
        TABLE.run(args, [], "fake", fake_run([]), render, 0.0)
    # One rate: nothing to tune, every seed runs it.
    assert harness.tuning_seeds(args_for(tmp_path, tune_seeds=[0], learning_rates=[1.0])) is None


def test_an_extended_report_names_every_command_whose_runs_it_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "PROGRAM", ["cfkeras-reproduce", "fake"])
    first = ["--seeds", "0"]
    TABLE.run(args_for(tmp_path, seeds=[0]), first, "fake", fake_run([]), render, 0.0)
    second = ["--seeds", "0", "1"]
    report = TABLE.run(args_for(tmp_path, seeds=[0, 1]), second, "fake", fake_run([]), render, 0)
    assert report["command"] == "cfkeras-reproduce fake --seeds 0 1"
    assert report["commands"] == [
        "cfkeras-reproduce fake --seeds 0",
        "cfkeras-reproduce fake --seeds 0 1",
    ]
    # The same command again adds nothing; a report of before `commands` starts from its command.
    report = TABLE.run(args_for(tmp_path, seeds=[0, 1]), second, "fake", fake_run([]), render, 0)
    assert len(report["commands"]) == 2
    assert harness.command_history({"command": "old"}) == ["old"]
    markdown = TABLE.markdown(report, "fake")
    assert "cfkeras-reproduce fake --seeds 0\n" in markdown


def test_with_tuning_seeds_the_rate_is_chosen_on_them_alone():
    def run(validation):
        return {"scores": {"validation": validation, "test": 0.5}, "best_epoch": 1}

    # Seeds 0 and 1 prefer rate 1; seed 2 prefers rate 3 so much that the mean
    # over all three seeds would pick 3.
    grid = {
        "gs@lr=1": {"0": run(0.60), "1": run(0.60), "2": run(0.10)},
        "gs@lr=3": {"0": run(0.55), "1": run(0.55), "2": run(0.90)},
    }
    assert TABLE.choose(grid, [0, 1, 2])[1] == {"gs": 3.0}
    runs, chosen = TABLE.choose(grid, [0, 1, 2], tune=[0, 1])
    assert chosen == {"gs": 1.0}
    assert runs["gs"] is grid["gs@lr=1"] and set(runs["gs"]) == {"0", "1", "2"}


def test_seeds_text_reads_the_seeds_from_the_runs_not_the_last_command():
    # A last command that extended one row on seeds 0-2 must not make the
    # table claim seeds 0-2 for rows that have 0-4.
    report = {
        "runs": {
            "control": {str(s): {} for s in range(5)},
            "gs": {str(s): {} for s in range(5)},
            "gs_random_logit": {str(s): {} for s in range(3)},
        },
        "args": {"seeds": [0, 1, 2]},
    }
    assert harness.seeds_text(report) == "0, 1, 2, 3, 4 (fewer for gs_random_logit: 0, 1, 2)"
    del report["runs"]["gs_random_logit"]
    assert harness.seeds_text(report) == "0, 1, 2, 3, 4"


def test_every_report_keeps_its_commands_by_one_rule(tmp_path):
    assert harness.extend_history(["a", "b"], ["b", "c", "a", "c"]) == ["a", "b", "c"]
    history = ["a"]
    assert harness.extend_history(history, ["b"]) == ["a", "b"] and history == ["a"]

    # run_nested follows it: a command given again after another one (to
    # resume a grid) is not listed twice. Each invocation runs one cell,
    # then is interrupted by the next cell's first attempt.
    command, attempts = ["first"], []

    def cell(name):
        def run():
            if name != "a" and name not in attempts:
                attempts.append(name)
                raise RuntimeError("interrupted")
            return {"scores": {"v": 1.0}}

        return run

    def grid(runs):
        for name in "abc":
            yield (name,), name, cell(name)

    def report(runs):
        return {"runs": runs, "command": command[0]}

    for name in ["first", "second"]:
        command[0] = name
        with pytest.raises(RuntimeError, match="interrupted"):
            harness.run_nested(tmp_path, "s", grid, report, json.dumps)
    command[0] = "first"
    final = harness.run_nested(tmp_path, "s", grid, report, json.dumps)
    assert set(final["runs"]) == {"a", "b", "c"}
    assert final["commands"] == ["first", "second"]


def test_the_rates_named_are_those_each_row_was_chosen_from():
    # A grid extended row by row: the last command's --learning-rates ([3]) is not the grid.
    report = {
        "args": {"learning_rates": [3.0]},
        "grid": {"control@lr=1": {}, "control@lr=3": {}, "gs@lr=1": {}, "gs@lr=3": {}},
    }
    assert harness.rates_text(report) == "[1, 3]"
    report["grid"].update({"gs@lr=10": {}, "gs_random@lr=3": {}})
    assert harness.rates_text(report) == "[1, 3] (control); [1, 3, 10] (gs); [3] (gs_random)"
    assert harness.rates_text({"args": {"learning_rates": [0.5, 2.0]}}) == "[0.5, 2]"
    assert harness.rates_text({"grid": {"original": {}}, "args": {}}) is None


def test_late_epochs_are_the_last_tenth_and_at_least_the_last_one():
    assert harness.first_late_epoch(100) == 91 and harness.first_late_epoch(150) == 136
    assert harness.first_late_epoch(16) == 15 and harness.first_late_epoch(8) == 8
    assert harness.is_late(91, 100) and not harness.is_late(90, 100)
    assert harness.late_majority([8, 8, 3], 8) and not harness.late_majority([8, 2, 3], 8)
    assert not harness.late_majority([], 8)
    # One number of epochs per run: a run stopped early at 8 of 40 is late at 8.
    assert harness.late_majority([8, 40, 3], [8, 40, 40])
    assert not harness.late_majority([8, 8, 3], [40, 40, 8])
