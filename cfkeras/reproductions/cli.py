"""The console entry point `cfkeras-reproduce`: one command a reproduction.

    cfkeras-reproduce imdb --seeds 0 1 2 3 4
    cfkeras-reproduce snli --seeds 0 1 2 3 4 --rows augmentation control gs
    cfkeras-reproduce imdb-few --counterfactuals 50 200 800 all --seeds 0 1 2 3 4
    cfkeras-reproduce summary --results results --out results/evidence_summary

Every command takes the arguments of its module (`cfkeras-reproduce imdb
--help`), prints a progress bar over its runs with an estimate of the time
left, and resumes a cut-short run when given the same command again.
"""

import importlib
import sys

from cfkeras.reproductions import harness

COMMANDS = {
    "imdb": ("cfkeras.reproductions.imdb_table3", "IMDb rows of Table 3"),
    "snli": ("cfkeras.reproductions.snli_table3", "SNLI rows of Table 3"),
    "imdb-few": (
        "cfkeras.reproductions.few_counterfactuals",
        "IMDb: few counterfactuals, many originals (curves against k)",
    ),
    "summary": (
        "cfkeras.reproductions.summary",
        "every committed GS − control comparison in one table and forest plot",
    ),
}


def usage():
    lines = ["usage: cfkeras-reproduce {" + ",".join(COMMANDS) + "} [args]", ""]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`cfkeras-reproduce COMMAND --help` lists a command's arguments."]
    return "\n".join(lines)


def main(argv=None):
    """Runs `COMMANDS[argv[0]]`'s `main(argv[1:])`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cfkeras-reproduce: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    module = importlib.import_module(COMMANDS[command][0])
    harness.PROGRAM = ["cfkeras-reproduce", command]
    try:
        module.main(rest)
    finally:
        harness.PROGRAM = None
    return 0
