"""The IMDb reproduction runs end to end on a tiny subset, in seconds."""

import json

import numpy as np
from example_scripts import load_example


def test_reproduction_runs_every_row_on_a_subset(tmp_path, shared_dir):
    script = load_example("reproduce_imdb_table3")
    out = tmp_path / "results"
    script.main(
        [
            "--seeds", "0", "1",
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
    report = json.loads((out / "imdb_table3_smoke.json").read_text())
    assert not (out / "imdb_table3_smoke.partial.json").exists()  # only while running
    assert set(report["runs"]) == set(script.ROWS)
    for row, by_seed in report["runs"].items():
        assert set(by_seed) == {"0", "1"}
        for result in by_seed.values():
            assert set(result["scores"]) == set(script.COLUMNS)
            assert all(0.0 <= v <= 1.0 for v in result["scores"].values())
            assert 1 <= result["best_epoch"] <= 2
        cells = report["summary"][row]
        values = [100 * r["scores"]["test_edited"] for r in by_seed.values()]
        np.testing.assert_allclose(cells["test_edited"]["mean"], np.mean(values))
        np.testing.assert_allclose(cells["test_edited"]["std"], np.std(values, ddof=1))
    markdown = (out / "imdb_table3_smoke.md").read_text()
    assert "(89.8)" in markdown and "--limit 48" in markdown
    assert (out / "imdb_table3_smoke.png").stat().st_size > 0
    # One TensorBoard folder a run, and the best GS ensemble served from raw strings.
    assert len(list((tmp_path / "logs").glob("length16/seed*/*"))) == 2 * len(script.ROWS)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "exported"))  # keep it: it owns the variables
    assert loaded.serve(tf.constant(["great", "bad"])).shape == (2, 1)
