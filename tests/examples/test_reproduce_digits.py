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
        values = [100 * r["scores"]["test_edited"] for r in by_seed.values()]
        np.testing.assert_allclose(saved["summary"][row]["test_edited"]["mean"], np.mean(values))
    assert set(saved["chosen"]) == set(script.ROWS) - {"chance"}
    assert (out / "digits_table2_smoke.png").stat().st_size > 0
    assert (out / "digits_table2_smoke_gradients.png").stat().st_size > 0
    markdown = (out / "digits_table2_smoke.md").read_text()
    assert "--train-canvases 512" in markdown and "Paired differences" in markdown
    assert report["data"]["test_hard_edited"] > 0
    # Resume: a partial file with every run finished is read back, not re-run
    # (only the first seed of the figure's two rows is trained again).
    partial = out / "digits_table2_smoke.partial.json"
    partial.write_text(json.dumps(report))
    again = script.main([*ARGS, "--out", str(out)])
    assert again["runs"] == report["runs"]
