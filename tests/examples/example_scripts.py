"""Loading the example scripts as modules (they are scripts, not a package)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name):
    """`examples/<name>.py` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_report(script, out, stem, seeds, epochs, rows=None):
    """Loads `<out>/<stem>.json` and checks what every reproduction writes:
    no partial file left, every row (default: all of the script's) and seed,
    scores in [0, 1], best epochs in range, and the summary's mean and std
    recomputed from the runs (std 0 for one seed)."""
    import json

    import numpy as np

    report = json.loads((out / f"{stem}.json").read_text())
    assert not (out / f"{stem}.partial.json").exists()  # only while running
    assert set(report["runs"]) == set(script.ROWS if rows is None else rows)
    for row, by_seed in report["runs"].items():
        assert set(by_seed) == {str(seed) for seed in seeds}
        for result in by_seed.values():
            assert set(result["scores"]) == set(script.COLUMNS)
            assert all(0.0 <= v <= 1.0 for v in result["scores"].values())
            assert 1 <= result["best_epoch"] <= epochs
        cells = report["summary"][row]["test_edited"]
        values = [100 * r["scores"]["test_edited"] for r in by_seed.values()]
        np.testing.assert_allclose(cells["mean"], np.mean(values))
        std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        np.testing.assert_allclose(cells["std"], std)
    assert (out / f"{stem}.png").stat().st_size > 0
    return report
