"""The stacked ensemble (alone and under GS) and CAT under
`tf.distribute.MirroredStrategy` on two logical CPU devices: the same per-step
logs and final weights as on one device, to 1e-5 (`mirrored_run.py`, in fresh
processes: the logical devices must be set before TensorFlow initialises).

For CAT the partners, layer m and λ must be drawn for the global batch: a
replica drawing for its own rows only would give other λ, other partners and
another `cat_lambda`. No XLA: XLA with MirroredStrategy on logical CPU devices
fails in TensorFlow itself.
"""

from pathlib import Path

import numpy as np
import pytest
from concurrent_runs import run_modes

HERE = Path(__file__).resolve().parent
TRAINERS = ("ensemble", "ensemble_gs", "cat")


@pytest.fixture(scope="module")
def runs():
    return run_modes([str(HERE / "mirrored_run.py")], timeout=400)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_mirrored_matches_single_device(runs, trainer):
    assert runs["single"]["replicas"] == 1 and runs["mirrored"]["replicas"] == 2
    single, mirrored = runs["single"][trainer], runs["mirrored"][trainer]
    assert single["jit_compile"] is False and mirrored["jit_compile"] is False
    assert set(single["history"]) == set(mirrored["history"])
    differences = {}
    for key, values in single["history"].items():
        assert len(values) == 4 and np.all(np.isfinite(values)), key
        differences[key] = float(np.max(np.abs(np.subtract(values, mirrored["history"][key]))))
    weights = [np.array(w) for w in single["weights"]]
    pairs = zip(weights, (np.array(w) for w in mirrored["weights"]))
    differences["weights"] = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    print(f"\n{trainer}: max |single - mirrored| {differences}")
    for key, values in single["history"].items():
        np.testing.assert_allclose(mirrored["history"][key], values, atol=1e-5, err_msg=key)
    assert differences["weights"] < 1e-5
    # The weights moved well beyond the tolerance.
    initial = [np.array(w) for w in single["initial"]]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, initial)) > 1e-2
    if trainer == "cat":
        assert "crm_loss" in single["history"] and min(single["history"]["cat_lambda"]) > 0
