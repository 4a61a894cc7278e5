"""The few-counterfactuals command without training: which `imdb_table3`
runs it asks for, and k = all read from the full table."""

import json

from cfkeras.reproductions import few_counterfactuals, imdb_table3


def fake_report(rows, seeds):
    return {"runs": {row: {str(s): {"scores": {}} for s in seeds} for row in rows}}


def test_k_all_reuses_the_full_table_when_it_holds_every_row_and_seed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(imdb_table3, "main", lambda argv: calls.append(argv))
    argv = ["--counterfactuals", "50", "all", "--out", str(tmp_path), "--tag", "evidence"]
    rest = ["--seeds", "0", "1", "--learning-rates", "16", "32"]
    # The full table of `cfkeras-reproduce imdb --tag evidence` has the rows for seeds 0 and 1.
    full = tmp_path / "imdb_table3_evidence.json"
    full.write_text(json.dumps(fake_report(["augmentation", "control", "gs", "other"], [0, 1])))
    args, parsed_rest = few_counterfactuals.parse_args(argv + rest)
    few_counterfactuals.run(args, parsed_rest)
    assert len(calls) == 1  # k = 50 only
    k50 = calls[0]
    assert k50[k50.index("--rows") + 1 :][:4] == ["original", "augmentation", "control", "gs"]
    assert k50[k50.index("--tag") + 1] == "evidence_k50"
    assert k50[k50.index("--counterfactuals") + 1] == "50"
    assert few_counterfactuals.stem(args, "all") == "imdb_table3_evidence"
    # A seed the full table lacks: k = all runs under the full table's stem, without k.
    calls.clear()
    args, parsed_rest = few_counterfactuals.parse_args(
        argv + ["--seeds", "0", "1", "2", "--learning-rates", "16"]
    )
    few_counterfactuals.run(args, parsed_rest)
    assert len(calls) == 2
    assert "--counterfactuals" not in calls[1]
    assert calls[1][calls[1].index("--tag") + 1] == "evidence"
    assert calls[1][calls[1].index("--rows") + 1 :][:3] == ["augmentation", "control", "gs"]


def test_the_curves_report_names_every_command_of_every_k(tmp_path):
    def report(commands, k_rows=("augmentation", "control", "gs")):
        return {
            "command": commands[-1],
            "commands": commands,
            "machine": "m",
            "wall_seconds": 60.0,
            "summary": {row: {} for row in k_rows},
        }

    first, second = "imdb --counterfactuals 50 --learning-rates 16 32", "imdb ... 16 32 64"
    (tmp_path / "imdb_table3_t_k50.json").write_text(json.dumps(report([first, second])))
    (tmp_path / "imdb_table3_t_k200.json").write_text(json.dumps(report([second, "imdb k200 128"])))
    args, _ = few_counterfactuals.parse_args(
        ["--counterfactuals", "50", "200", "--out", str(tmp_path), "--tag", "t"]
    )
    curves = few_counterfactuals.collect(args)
    assert curves["commands"] == [first, second, "imdb k200 128"]
    assert "imdb k200 128" in few_counterfactuals.render(curves)
