"""Smoke test of the GS benchmark suite (benchmarks/gs_*.py): no timing, no peer packages.

The configurations come from `../shared/bench/common.py` (skipped without it):
a few GS steps through the benchmark's own code paths, and agreement of
cfkeras's GS loss and gradients with the float64 NumPy reference to 1e-4.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gs_precision  # noqa: E402
import gs_setup  # noqa: E402
import gs_step  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def common():
    shared = REPO.parent / "shared" / "bench"
    if not (shared / "common.py").is_file():
        pytest.skip(f"{shared}/common.py not found: the benchmark configs live in ../shared/bench")
    return gs_setup.load_common(shared)


@pytest.mark.parametrize("cfg", ["M2_B32", "M1_B256"])
def test_gs_loss_and_gradients_match_numpy_float64(common, cfg):
    # Central differences along the gradient's own direction (and a random one
    # on the cheap M2): the reference is a NumPy forward pass.
    directions = ("own", "random") if cfg == "M2_B32" else ("own",)
    result = gs_setup.check(common, cfg, fd_directions=directions)
    assert result["contrast_ok"]  # cfkeras's "sum" contrast is common's sign * onehot
    assert result["supervised"] == result["rows"]
    assert result["main_rel"] < TOLERANCE
    assert result["gs_rel"] < TOLERANCE
    assert result["eps_effect_rel"] < 1e-9  # common's EPS smoothing vs cfkeras's threshold
    assert max(result["grad_fd_model"].values()) < TOLERANCE


@pytest.mark.parametrize("mode, variant", [("gs", "fit"), ("plain", "raw")])
def test_benchmark_variants_run_a_few_steps(common, monkeypatch, mode, variant):
    monkeypatch.setattr(common, "n_steps_for", lambda cfg: 3)
    stats = gs_step._run_variant(common, "M2_B32", mode, variant, warmup=1)
    assert stats["n"] >= 2 and stats["median_ms"] > 0
    if variant == "raw":
        assert stats["traces"] == 1


def test_gs_fit_on_mlp_config_logs_finite_losses(common):
    kind, n_pairs = common.CONFIGS["M1_B256"]
    batch = common.make_batch(kind, n_pairs)
    gs = gs_setup.build(common, "M1_B256")
    before = [w.numpy() for w in gs.trainable_weights]
    dataset = gs_setup.pairs(batch).to_dataset(batch_size=n_pairs, seed=0).repeat()
    history = gs.fit(dataset, steps_per_epoch=1, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["gs_loss"]))
    assert history["gs_supervised"][-1] == 1.0
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, gs.trainable_weights))


# === Mixed precision ===
# mixed_float16 is tested in tests/models/test_gradient_supervision_degenerate.py.


def test_mixed_bfloat16_gs_loss_is_finite_and_close_to_float32():
    tiny = types.SimpleNamespace(LAM=1.0, LR=1e-3, ADAM_EPS=1e-7, MLP_SIZES={})
    sizes = [12, 8, 8, 8, 4]
    rng = np.random.default_rng(0)
    weights = {}
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        weights[f"W{k}"] = rng.uniform(-1, 1, (a, b)).astype("float32") * np.sqrt(6 / (a + b))
        weights[f"b{k}"] = rng.uniform(-0.05, 0.05, b).astype("float32")
    x_i = rng.standard_normal((16, sizes[0])).astype("float32")
    x_j = (x_i + 0.5 * rng.standard_normal(x_i.shape)).astype("float32")
    y_i = (rng.random((16, sizes[-1])) < 0.3).astype("float32")
    y_j = y_i.copy()
    y_j[np.arange(16), rng.integers(0, sizes[-1], 16)] -= 1.0
    y_j = np.abs(y_j)  # one label flipped per pair
    batch = {"x": np.concatenate([x_i, x_j]), "y": np.concatenate([y_i, y_j])}

    run = lambda policy, steps: gs_precision.evaluate_policy(
        tiny, "mlp_small", weights, batch, policy, sizes=sizes, steps=steps
    )
    reference = run("float32", 0)
    result = run("mixed_bfloat16", 3)
    assert result["compute_dtype"] == "bfloat16"
    assert np.all(np.isfinite(result["fit_loss"])) and np.all(np.isfinite(result["fit_gs_loss"]))
    assert result["supervised"] == reference["supervised"] == 32
    differences = gs_precision.compare(result, reference)
    assert differences["gs_rel"] < 1e-2
    assert differences["total_rel"] < 1e-2
    assert differences["grad_cos"] > 0.99
