"""Merges the IMDb evidence runs made in parallel (other --out folders) into
results/imdb_table3_evidence.json and re-renders the report (no training).

Usage, from the repository root, after the commands of the report's
"commands" (the last three with their own --out folders), listed one a line
in a file given as $COMMANDS:

    python results/imdb_table3_evidence_merge.py <out>/imdb_table3_evidence.json ...

A run present in two reports must have the same scores (the runs are
seeded). The report's wall time is the sum of the runs' training seconds.
"""

import json
import os
import sys
import time
from pathlib import Path

from cfkeras.reproductions import imdb_table3 as m

main = Path("results/imdb_table3_evidence.json")
report = json.loads(main.read_text())
grid = report["grid"]
for other in sys.argv[1:]:
    o = json.loads(Path(other).read_text())
    for key, by_seed in o["grid"].items():
        for seed, run in by_seed.items():
            assert seed not in grid.get(key, {}) or grid[key][seed]["scores"] == run["scores"], (
                key,
                seed,
            )
            grid.setdefault(key, {})[seed] = run
rows = [
    "augmentation",
    "control",
    "gs",
    "gs_random_logit",
    "gs_random_logit_one_way",
    "control_random_any",
]
args = m.parse_args(
    [
        "--seeds",
        "0",
        "1",
        "2",
        "3",
        "4",
        "--rows",
        *rows,
        "--learning-rates",
        "4",
        "8",
        "16",
        "32",
        "64",
        "--ood-dir",
        "../shared/data/ood",
        "--tag",
        "evidence",
        "--verbose",
        "0",
    ]
)
commands = Path(os.environ["COMMANDS"]).read_text().strip().splitlines()
new = m.TABLE.report(args, ["--seeds", "0", "1", "2", "3", "4"], time.perf_counter(), grid)
new["command"] = " ; ".join(commands)
new["commands"] = commands
new["wall_seconds"] = round(
    sum(r.get("train_seconds", 0) for b in grid.values() for r in b.values()), 1
)
main.write_text(json.dumps(new, indent=2))
print(m.TABLE.write(new, main, m.render))
