"""Full − cached by seed for CAT's few-shot reports (same method, seeds and
examples): `python results/cat_full_vs_cached.py imdb` (or `snli`), from the
repository's root. Reads `results/cat_few_shot_<dataset>_{full,cached}.json`;
in the cached report each method's rate is the one its 5 seeds ran (the rate
validation chose; the other rates of its grid ran on the tuning seeds only).
Prints mean ± standard error over the seeds both reports have, in points."""

import json
import sys
from pathlib import Path

import numpy as np

dataset = sys.argv[1]
per_class = sys.argv[2] if len(sys.argv) > 2 else "10"
full = json.loads(Path(f"results/cat_few_shot_{dataset}_full.json").read_text())["runs"][per_class]
cached = json.loads(Path(f"results/cat_few_shot_{dataset}_cached.json").read_text())["runs"][
    per_class
]
for method, rates in full.items():
    ((full_rate, f),) = rates.items()  # one rate in the full mode
    cached_rate, c = max(cached[method].items(), key=lambda item: len(item[1]))
    seeds = sorted(set(f) & set(c), key=int)
    columns = list(f[seeds[0]]["scores"])
    cells = []
    for column in columns:
        d = np.array([100 * (f[s]["scores"][column] - c[s]["scores"][column]) for s in seeds])
        cells.append(f"{column} {d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f}")
    print(
        f"{method} (full {full_rate}, cached {cached_rate}; seeds {', '.join(seeds)}): "
        + "; ".join(cells)
    )
