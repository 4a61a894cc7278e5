"""`examples/_reproduction.py` stays importable with the names example scripts use."""

from example_scripts import load_example

from cfkeras.reproductions import harness


def test_the_examples_helper_module_re_exports_the_harness():
    module = load_example("_reproduction")
    for name in ("Table", "add_run_arguments", "replot", "unpaired", "run_grid"):
        assert getattr(module, name) is getattr(harness, name)
