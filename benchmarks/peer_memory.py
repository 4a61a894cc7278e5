"""Peak memory of one peer step in a fresh process; run by gs_step.py under the peer's Python.

Imports the peer's own script (`bench_torch.py` or `bench_jax.py` from the
shared folder: their code, not a copy), notes the RSS once the framework is
imported, resets the peak, runs the script's `bench()` for one (config,
variant, mode) with a few timed steps, and prints `MEMORY {json}`:
peak RSS minus that baseline. Standard library only besides the peer.
"""

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from process_memory import print_peak, reset_peak_rss, status_kb  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", required=True, choices=("torch", "jax"))
    parser.add_argument("--shared", required=True)
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--mode", required=True, choices=("gs", "plain"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    # The peer scripts parse their own command line when imported.
    sys.argv = [f"bench_{args.framework}.py", "--cfg", args.cfg, "--threads", str(args.threads)]
    if args.framework == "torch":
        sys.argv += ["--variants", args.variant]
    sys.path.insert(0, os.path.abspath(args.shared))
    peer = importlib.import_module(f"bench_{args.framework}")
    peer.C.n_steps_for = lambda cfg: args.steps  # memory only: a few timed steps

    baseline = status_kb("VmRSS")
    reset = reset_peak_rss()
    gs = args.mode == "gs"
    if args.framework == "torch":
        peer.bench(args.cfg, args.variant, gs)
    else:
        peer.bench(args.cfg, gs)
    print_peak(
        baseline,
        reset,
        framework=args.framework,
        variant=args.variant,
        cfg=args.cfg,
        mode=args.mode,
    )


if __name__ == "__main__":
    main()
