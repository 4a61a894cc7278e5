"""Full − cached by seed for CAT's few-shot reports (same method, seeds and
examples): `python results/cat_full_vs_cached.py imdb` (or `snli`), from the
repository's root. Reads `results/cat_few_shot_<dataset>_{full,cached}.json`;
in the cached report each method's rate is the one its 5 seeds ran (the rate
validation chose; the other rates of its grid ran on the tuning seeds only).
Prints mean ± standard error over the seeds both reports have, in points."""

import json
import sys
from pathlib import Path

from cfkeras.reproductions.statistics import paired_differences, scores_by_column

dataset = sys.argv[1]
per_class = sys.argv[2] if len(sys.argv) > 2 else "10"
full = json.loads(Path(f"results/cat_few_shot_{dataset}_full.json").read_text())["runs"][per_class]
cached = json.loads(Path(f"results/cat_few_shot_{dataset}_cached.json").read_text())["runs"][
    per_class
]
for method, rates in full.items():
    ((full_rate, f),) = rates.items()  # one rate in the full mode
    cached_rate, c = max(cached[method].items(), key=lambda item: len(item[1]))
    columns = list(next(iter(f.values()))["scores"])
    differences = paired_differences(scores_by_column(f, columns), scores_by_column(c, columns))
    seeds = sorted(differences[columns[0]]["by_seed"], key=int)
    cells = [f"{k} {d['mean']:+.1f} ± {d['se']:.1f}" for k, d in differences.items()]
    print(
        f"{method} (full {full_rate}, cached {cached_rate}; seeds {', '.join(seeds)}): "
        + "; ".join(cells)
    )
