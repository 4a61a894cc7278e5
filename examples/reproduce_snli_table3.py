"""Thin wrapper of `cfkeras.reproductions.snli_table3` (also `cfkeras-reproduce snli`):
the same arguments; see that module for what it runs.

    python examples/reproduce_snli_table3.py --seeds 0 1 2
"""

from cfkeras.reproductions import snli_table3 as _reproduction
from cfkeras.reproductions.snli_table3 import *  # noqa: F403  (ROWS, COLUMNS, main, ...)

__doc__ = _reproduction.__doc__

if __name__ == "__main__":
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    main()  # noqa: F405
