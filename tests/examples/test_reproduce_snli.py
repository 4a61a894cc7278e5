"""The SNLI reproduction runs end to end on a tiny subset (one seed of three
rows by default, every row over two seeds with `-m slow`), and its
main-loss weights make the GS rows count every unique example as the
augmentation baseline does."""

from collections import Counter

import numpy as np
import pytest
from example_scripts import load_example, read_report


@pytest.fixture(scope="module")
def script():
    return load_example("reproduce_snli_table3")


# One row of each training path: unpaired augmentation, counterfactual pairs
# (ensemble), random pairing.
DEFAULT_ROWS = ("augmentation", "gs", "gs_random_any")


def run_smoke(script, tmp_path, shared_dir, seeds, rows):
    out = tmp_path / "results"
    script.main(
        [
            "--seeds", *map(str, seeds),
            "--rows", *rows,
            "--limit", "24",
            "--members", "2",
            "--epochs", "2",
            "--batch-size", "16",
            "--sequence-length", "12",
            "--data-dir", str(shared_dir / "data" / "cad"),
            "--out", str(out),
            "--tag", "smoke",
            "--log-dir", str(tmp_path / "logs"),
        ]
    )  # fmt: skip
    report = read_report(script, out, "snli_table3_smoke", seeds=seeds, epochs=2, rows=rows)
    for row, by_seed in report["runs"].items():
        for result in by_seed.values():
            assert ("final_gs_cosine" in result) == row.startswith(("gs", "control"))
    data = report["data"]
    assert data["groups"] == {"train": 24, "dev": 24, "test": 24}
    assert data["train_pairs"] == 4 * 24
    assert 0.9 < data["glove_coverage"] <= 1.0
    markdown = (out / "snli_table3_smoke.md").read_text()
    assert "(64.8)" in markdown and "--limit 24" in markdown and "50d" in markdown
    assert len(list((tmp_path / "logs").glob("length12/seed*/*"))) == len(seeds) * len(rows)


def test_reproduction_runs_one_seed_of_each_training_path(script, tmp_path, shared_dir):
    run_smoke(script, tmp_path, shared_dir, seeds=(0,), rows=DEFAULT_ROWS)


@pytest.mark.slow
def test_reproduction_runs_every_row_over_two_seeds(script, tmp_path, shared_dir):
    run_smoke(script, tmp_path, shared_dir, seeds=(0, 1), rows=script.ROWS)


@pytest.mark.parametrize("edit_pairs", [False, True])
def test_main_loss_weights_count_every_unique_example_once(script, shared_dir, edit_pairs):
    args = script.parse_args(
        ["--limit", "30", "--data-dir", str(shared_dir / "data" / "cad")]
        + (["--edit-pairs"] if edit_pairs else [])
    )
    data = script.load_data(args)
    pairs, weights = data.pairs, data.pairs.sample_weight
    # Total weight of every unique member (group, sentences, label) over the
    # pairs it sits in: the same for all, as each counts once in augmentation.
    totals = Counter()
    sides = {
        "original": (pairs.original, pairs.label),
        "counterfactual": (pairs.counterfactual, pairs.counterfactual_label),
    }
    for name, (x, y) in sides.items():
        for k in range(len(pairs)):
            member = (
                int(pairs.group_id[k]),
                tuple(x["premise"][k]),
                tuple(x["hypothesis"][k]),
                int(y[k].argmax()),
            )
            totals[member] += float(weights[name][k])
    assert len(totals) == 5 * 30  # every original and edit, each once
    np.testing.assert_allclose(list(totals.values()), next(iter(totals.values())), rtol=1e-5)
    mean = np.mean(np.concatenate([weights["original"], weights["counterfactual"]]))
    np.testing.assert_allclose(mean, 1.0, rtol=1e-6)
    if not edit_pairs:
        np.testing.assert_allclose(weights["original"], 0.4, rtol=1e-6)
        np.testing.assert_allclose(weights["counterfactual"], 1.6, rtol=1e-6)


def test_standardize_splits_hyphens_and_strips_punctuation(script):
    import tensorflow as tf

    out = script.standardize(tf.constant(["A T-shirt, red/blue!"])).numpy()[0].decode()
    assert out.split() == ["a", "t", "shirt", "red", "blue"]
