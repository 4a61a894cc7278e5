"""The IMDb reproduction runs end to end on a tiny subset, in seconds."""

from example_scripts import load_example, read_report


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
    read_report(script, out, "imdb_table3_smoke", seeds=(0, 1), epochs=2)
    markdown = (out / "imdb_table3_smoke.md").read_text()
    assert "(89.8)" in markdown and "--limit 48" in markdown
    # One TensorBoard folder a run, and the best GS ensemble served from raw strings.
    assert len(list((tmp_path / "logs").glob("length16/seed*/*"))) == 2 * len(script.ROWS)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "exported"))  # keep it: it owns the variables
    assert loaded.serve(tf.constant(["great", "bad"])).shape == (2, 1)
