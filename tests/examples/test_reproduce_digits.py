"""The digit-canvas reproduction (Table 2's shape) runs end to end on a tiny
configuration, writes its report and figure, and resumes from partial results."""

import json

import numpy as np
import pytest
from example_scripts import load_example

pytest.importorskip("sklearn")

ARGS = [
    "--seeds", "0", "1",
    "--train-canvases", "512",
    "--test-canvases", "300",
    "--epochs", "2",
    "--patience", "1",
    "--learning-rates", "1",
    "--gs-weights", "0.1",
    "--tag", "smoke",
]  # fmt: skip


@pytest.mark.slow
def test_reproduction_runs_every_row_and_resumes(tmp_path):
    script = load_example("reproduce_digits_table2")
    out = tmp_path / "results"
    report = script.main([*ARGS, "--out", str(out)])
    assert not (out / "digits_table2_smoke.partial.json").exists()
    saved = json.loads((out / "digits_table2_smoke.json").read_text())
    assert set(saved["runs"]) == set(script.ROWS)
    for row, by_seed in saved["runs"].items():
        assert set(by_seed) == {"0", "1"}
        for result in by_seed.values():
            assert set(result["scores"]) == set(script.COLUMNS)
            assert all(0.0 <= v <= 1.0 for v in result["scores"].values())
            assert result["best_epoch"] in ((0,) if row == "chance" else (1, 2))
            if row != "chance":  # early stopping: best epoch + patience at most
                assert result["best_epoch"] <= result["epochs_run"] <= 2
        values = [100 * r["scores"]["test_edited"] for r in by_seed.values()]
        np.testing.assert_allclose(saved["summary"][row]["test_edited"]["mean"], np.mean(values))
    assert set(saved["chosen"]) == set(script.ROWS) - {"chance"}
    assert (out / "digits_table2_smoke.png").stat().st_size > 0
    assert (out / "digits_table2_smoke_gradients.png").stat().st_size > 0
    markdown = (out / "digits_table2_smoke.md").read_text()
    assert "--train-canvases 512" in markdown and "Paired differences" in markdown
    assert "Tuning runs (seed 0)" in markdown
    # Every row, the GS rows too, chose its learning rate from the same grid.
    assert saved["args"]["gs_learning_rate"] == "grid"
    assert all(f"{row} lr=1.0 gs_weight=0.1" in saved["tuning"] for row in script.GS_ROWS)
    assert report["data"]["test_hard_edited"] > 0
    # Resume: a partial file with every run finished is read back, not re-run
    # (only the first seed of the figure's two rows is trained again).
    partial = out / "digits_table2_smoke.partial.json"
    partial.write_text(json.dumps(report))
    again = script.main([*ARGS, "--out", str(out)])
    assert again["runs"] == report["runs"]


@pytest.mark.slow
def test_mask_regions_run(tmp_path):
    script = load_example("reproduce_digits_table2")
    args = [*ARGS[:-1], "mask_smoke", "--rows", "augmentation", "gs_sum", "--regions", "masks"]
    report = script.main([*args, "--seeds", "0", "--out", str(tmp_path)])
    assert report["args"]["regions"] == "masks"
    assert set(report["runs"]) == {"augmentation", "gs_sum"}
    assert (tmp_path / "digits_table2_mask_smoke_gradients.png").stat().st_size > 0


def test_region_masks_are_the_ink_inside_the_boxes():
    script = load_example("reproduce_digits_table2")
    rng = np.random.default_rng(0)
    images = {d: rng.random((3, 8, 8)).round(1).astype("float32") for d in range(10)}
    placed = [script.render([0, 1, 5], images, rng), script.render([7], images, rng)]
    data, labels = script.pack(placed)
    boxes, masks = data["regions"]["boxes"], data["regions"]["masks"]
    assert masks.shape == (2, 4, 32, 32) and masks.dtype == np.uint8
    for k, canvas in enumerate(placed):
        for r, (_, image, y, x) in enumerate(canvas):
            np.testing.assert_array_equal(masks[k, r, y : y + 8, x : x + 8], image > 0)
            assert masks[k, r].sum() == (image > 0).sum()  # nothing outside its box
            np.testing.assert_allclose(boxes[k, r], np.array([y, x, y + 8, x + 8]) / 32)
    assert masks[1, 1:].sum() == 0  # padding regions are empty


def test_patience_must_be_a_tenth_of_the_epochs():
    script = load_example("reproduce_digits_table2")
    assert script.parse_args(["--epochs", "300", "--patience", "30"]).patience == 30
    with pytest.raises(SystemExit):
        script.parse_args(["--epochs", "300", "--patience", "29"])


def test_paired_differences_are_by_seed_with_holm_over_the_edited_columns():
    script = load_example("reproduce_digits_table2")
    control = {0.50: 0.30, 0.52: 0.33, 0.49: 0.31}
    gs = {0: (0.03, 0.05, 0.010), 1: (0.01, 0.02, 0.012), 2: (0.02, 0.04, 0.011)}

    def run(seed, base, shift=(0.0, 0.0, 0.0)):
        return {
            "scores": {
                "validation": base + shift[0],
                "test_original": base + shift[0],
                "test_edited": base - 0.1 + shift[1],
                "test_hard_edited": base - 0.2 + shift[2],
            }
        }

    bases = list(control)
    report = {
        "runs": {
            "augmentation": {str(s): run(s, bases[s]) for s in range(3)},
            "gs_sum": {str(s): run(s, bases[s], gs[s]) for s in range(3)},
            "gs_random": {"0": run(0, bases[0])},  # one seed: no line
        }
    }
    lines = script.paired_differences(report)
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].split("|")[2:-1]]
    # NumPy, by hand: mean and standard error of the differences in points.
    for column, k in (("test_original", 0), ("test_edited", 1), ("test_hard_edited", 2)):
        d = 100 * np.array([gs[s][k] for s in range(3)])
        se = d.std(ddof=1) / np.sqrt(3)
        cell = cells[script.COLUMNS.index(column)]
        assert cell.startswith(f"{d.mean():+.2f} ± {se:.2f}")
    p_edited = float(cells[2].split("Holm ")[1].split()[0])
    p_hard = float(cells[3].split("Holm ")[1].split()[0])
    assert "p " in cells[1] and "Holm" not in cells[1]  # not in the family
    # The hard-edited difference (1.0, 1.2, 1.1) is far steadier than the
    # edited one (5, 2, 4): Holm multiplies its p by 2, the other's by 1.
    assert p_hard < p_edited
    from scipy import stats

    raw = {
        k: stats.ttest_1samp(100 * np.array([gs[s][k] for s in range(3)]), 0.0).pvalue
        for k in (1, 2)
    }
    assert raw[2] < raw[1]
    assert p_hard == pytest.approx(min(1.0, 2 * raw[2]), abs=0.0006)
    assert p_edited == pytest.approx(max(min(1.0, 2 * raw[2]), raw[1]), abs=0.0006)
