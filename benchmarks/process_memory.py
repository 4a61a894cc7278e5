"""Peak-memory bookkeeping of the current process (Linux `/proc`), stdlib only.

Shared by the cfkeras benchmarks and by `peer_memory.py`, which runs inside the
peers' virtual environments (no TensorFlow there).
"""

import json


def status_kb(key):
    """A `/proc/self/status` field in kB (e.g. "VmRSS", "VmHWM"); 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def print_peak(baseline_kb, peak_reset, **fields):
    """Prints `MEMORY {json}`: `fields`, then the peak RSS above `baseline_kb` in MB.

    `baseline_kb` is the RSS before the measured work (`status_kb("VmRSS")`)
    and `peak_reset` what `reset_peak_rss` returned then; `gs_step.py` reads
    the line from the subprocess's output.
    """
    record = {
        **fields,
        "peak_mb": (status_kb("VmHWM") - baseline_kb) / 1024,
        "baseline_mb": baseline_kb / 1024,
        "peak_reset": peak_reset,
    }
    print("MEMORY " + json.dumps(record), flush=True)
