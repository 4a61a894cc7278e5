"""Peak-memory bookkeeping of the current process (Linux `/proc`), stdlib only.

Shared by the cfkeras benchmarks and by `peer_memory.py`, which runs inside the
peers' virtual environments (no TensorFlow there).
"""


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
