"""The reproductions' shared helpers, now `cfkeras.reproductions.harness`:
re-exported here so that example scripts importing `_reproduction` keep
working (`Table`, `add_run_arguments`, `replot`, `unpaired`, `run_grid`).

Not a public API.
"""

from cfkeras.reproductions.harness import (  # noqa: F401
    Table,
    add_optimizer_arguments,
    add_run_arguments,
    history_record,
    make_optimizer,
    replot,
    run_grid,
    unpaired,
)
