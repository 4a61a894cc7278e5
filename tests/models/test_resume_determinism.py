"""Resume and determinism of every trainer (GS on random relations, the stacked
ensemble, CAT), in fresh processes (`resume_run.py`).

Three runs of the same seeded script, with TensorFlow's op determinism: one
uninterrupted; one interrupted by an exception raised from a callback in the
middle of epoch 2 (after `keras.callbacks.BackupAndRestore` saved epoch 1);
and a fresh process resuming the interrupted one from its backup. The data
orders come from `cfkeras.pairs.EpochSeed`, CAT's draws from `(seed,
optimizer.iterations)`: the resumed run must end with the uninterrupted
run's weights, and every batch loss of the two independent runs must be
identical.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAINERS = ("gs", "ensemble", "cat")


def _launch(mode, backup_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, str(HERE / "resume_run.py"), mode, str(backup_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process, mode):
    try:
        out, err = process.communicate(timeout=400)
    finally:
        process.kill()
    assert process.returncode == 0, f"{mode}:\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    backup = tmp_path_factory.mktemp("backup")
    full = _launch("full", tmp_path_factory.mktemp("unused"))
    interrupted = _launch("interrupt", backup)
    results = {"full": _result(full, "full"), "interrupt": _result(interrupted, "interrupt")}
    results["resume"] = _result(_launch("resume", backup), "resume")
    return results


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_resumed_run_ends_with_the_uninterrupted_weights(runs, trainer):
    full, interrupted, resumed = (runs[mode][trainer] for mode in ("full", "interrupt", "resume"))
    assert not full["interrupted"] and interrupted["interrupted"] and not resumed["interrupted"]
    # Interrupted after batch 1 of epoch 2; resumed from the start of epoch 2.
    assert sorted(interrupted["batch_losses"]) == ["0", "1", "2"]
    assert len(interrupted["batch_losses"]["2"]) == 2
    assert sorted(resumed["batch_losses"]) == ["2"]
    weights = [np.array(w) for w in full["weights"]]
    resumed_weights = [np.array(w) for w in resumed["weights"]]
    interrupted_weights = [np.array(w) for w in interrupted["weights"]]
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, resumed_weights))
    print(f"\n{trainer}: max |uninterrupted - resumed| weight {difference:.3g}")
    for a, b in zip(resumed_weights, weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed["batch_losses"]["2"], full["batch_losses"]["2"], atol=1e-6)
    # The interruption left other weights: resuming did the work.
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights, interrupted_weights)) > 1e-3


@pytest.mark.parametrize("trainer", TRAINERS)
def test_two_seeded_runs_give_identical_losses(runs, trainer):
    # The interrupted run is a second, independent process with the same seed.
    full, other = runs["full"][trainer]["batch_losses"], runs["interrupt"][trainer]["batch_losses"]
    for epoch in ("0", "1"):
        assert other[epoch] == full[epoch], epoch
    assert other["2"] == full["2"][: len(other["2"])]
    # Every epoch's data (random relations, CAT's draws) differs: the losses move.
    assert len({tuple(losses) for losses in full.values()}) == 3
