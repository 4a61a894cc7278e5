"""`examples/multi_worker_gradient_supervision.py`: GS on two worker processes
(MultiWorkerMirroredStrategy over loopback) gives the loss curve of one worker
with the global batch. Behind the `multiworker` marker:

    python -m pytest tests/examples/test_multi_worker.py -m multiworker -q -s
"""

import pytest
from example_scripts import load_example


@pytest.mark.multiworker
def test_two_workers_give_the_single_worker_loss_curve():
    script = load_example("multi_worker_gradient_supervision")
    report = script.compare(epochs=3, timeout=300)
    print(
        f"\ntwo workers vs one: max |loss difference| {report['max_loss_difference']:.3g} "
        f"(per epoch {report['max_epoch_loss_difference']:.3g}), max |weight difference| "
        f"{report['max_weight_difference']:.3g}, {report['seconds']} s"
    )
    assert report["replicas"] == [2, 1]
    assert report["workers_agree"]
    assert len(report["two_worker_batch_losses"]) == 3 * script.PAIRS // script.GLOBAL_BATCH
    assert report["max_loss_difference"] < 1e-5
    assert report["max_weight_difference"] < 1e-5
    # The curve moves: the comparison is not between constants.
    losses = report["single_worker_batch_losses"]
    assert max(losses) - min(losses) > 0.1
