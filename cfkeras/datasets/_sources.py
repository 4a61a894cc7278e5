"""Argument checks shared by the dataset builders."""

import os

# The sources a builder reads: its local copy or the pinned upstream files.
SOURCES = ("auto", "download")


def builder_source(cad_dir, source):
    """Checks a builder's `cad_dir` and `source` arguments.

    Returns:
        `(cad_dir, source)`, `cad_dir` as a `str` (or `None`).

    Raises:
        ValueError: `source` is not in `SOURCES`, or `cad_dir` is given with
            `source="download"`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; received {source!r}.")
    if source == "download" and cad_dir is not None:
        raise ValueError("Pass `cad_dir` with source='auto' only.")
    return (None if cad_dir is None else os.fspath(cad_dir)), source
