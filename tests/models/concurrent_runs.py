"""Running one test script per mode in fresh processes, concurrently, and
reading the JSON each prints last (the Mirrored tests: one device against
two logical CPUs, which must be configured before TensorFlow starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_modes(script_args, modes=("single", "mirrored"), timeout=400):
    """`{mode: json}`: runs `python *script_args mode` for every mode at once
    (this tree first on the path, no GPU, quiet TensorFlow), waits for all,
    and fails with the tail of stderr when one exits non-zero."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("XLA_FLAGS", None)
    processes = {
        mode: subprocess.Popen(
            [sys.executable, *script_args, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    }
    results = {}
    try:
        for mode, process in processes.items():
            out, err = process.communicate(timeout=timeout)
            assert process.returncode == 0, f"{mode}:\n{err[-4000:]}"
            results[mode] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in processes.values():
            process.kill()
    return results
