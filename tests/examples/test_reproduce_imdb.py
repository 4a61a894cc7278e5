"""The IMDb reproduction runs end to end on a tiny subset, in seconds: one seed
of three rows (flat augmentation, + GS with the ensemble's export, random
relations) by default, every row over two seeds with `-m slow`."""

import pytest
from example_scripts import load_example, read_report

# One row of each training path: unpaired, counterfactual pairs (ensemble,
# export), random pairing.
DEFAULT_ROWS = ("augmentation", "gs", "gs_random_any")


def run_smoke(tmp_path, shared_dir, seeds, rows):
    script = load_example("reproduce_imdb_table3")
    out = tmp_path / "results"
    script.main(
        [
            "--seeds", *map(str, seeds),
            "--rows", *rows,
            "--limit", "48",
            "--members", "2",
            "--epochs", "2",
            "--sequence-length", "16",
            "--vocabulary-size", "300",
            "--ood-dir", str(shared_dir / "data" / "ood"),
            "--out", str(out),
            "--tag", "smoke",
            "--log-dir", str(tmp_path / "logs"),
            "--export", str(tmp_path / "exported"),
            "--verbose", "0",
        ]
    )  # fmt: skip
    read_report(script, out, "imdb_table3_smoke", seeds=seeds, epochs=2, rows=rows)
    markdown = (out / "imdb_table3_smoke.md").read_text()
    assert "(89.8)" in markdown and "--limit 48" in markdown
    # One TensorBoard folder a run, and the best GS ensemble served from raw strings.
    assert len(list((tmp_path / "logs").glob("length16/seed*/*"))) == len(seeds) * len(rows)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "exported"))  # keep it: it owns the variables
    assert loaded.serve(tf.constant(["great", "bad"])).shape == (2, 1)


def test_reproduction_runs_one_seed_of_each_training_path(tmp_path, shared_dir):
    run_smoke(tmp_path, shared_dir, seeds=(0,), rows=DEFAULT_ROWS)


@pytest.mark.slow
def test_reproduction_runs_every_row_over_two_seeds(tmp_path, shared_dir):
    script = load_example("reproduce_imdb_table3")
    run_smoke(tmp_path, shared_dir, seeds=(0, 1), rows=script.ROWS)


@pytest.mark.slow
def test_few_counterfactuals_curves_run_through_the_console_entry_point(tmp_path, shared_dir):
    import json

    from cfkeras.reproductions import cli

    out = tmp_path / "results"
    argv = [
        "imdb-few", "--counterfactuals", "10", "all", "--seeds", "0", "1",
        "--limit", "48", "--members", "2", "--epochs", "2", "--sequence-length", "16",
        "--vocabulary-size", "300", "--ood-dir", str(shared_dir / "data" / "ood"),
        "--out", str(out), "--tag", "smoke", "--verbose", "0",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((out / "imdb_few_counterfactuals_smoke.json").read_text())
    assert report["counterfactuals"] == ["10", "all"]
    for entry in report["by_k"].values():
        assert set(entry["summary"]) == {"original", "augmentation", "control", "gs"}
        assert set(entry["differences"]["columns"]["test_edited"]["by_seed"]) == {"0", "1"}
    assert (out / "imdb_few_counterfactuals_smoke.png").stat().st_size > 0
    per_k = json.loads((out / "imdb_table3_smoke_k10.json").read_text())
    assert per_k["command"].startswith("cfkeras-reproduce imdb ")
    # Finished k are skipped when the command is run again.
    assert cli.main(argv) == 0
