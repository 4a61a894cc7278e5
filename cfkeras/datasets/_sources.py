"""Shared by the counterfactually-augmented-data loaders and builders."""

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


def download_upstream(fname, origin, sha256, data_dir, subdir):
    """Downloads one pinned upstream file with `keras.utils.get_file`.

    Args:
        fname: the file's name.
        origin: its pinned URL.
        sha256: its expected SHA-256 (verified).
        data_dir: a directory to save it under, laid out like the upstream
            repository; `None` for the Keras cache
            (`~/.keras/datasets/counterfactually-augmented-data/`).
        subdir: its folder inside the upstream repository, e.g.
            `sentiment/combined/paired`.

    Returns:
        The path of the downloaded (or already cached) file.
    """
    import keras  # Only the download needs Keras (and TensorFlow).

    if data_dir is None:
        cache_dir, cache_subdir = None, os.path.join("datasets", "counterfactually-augmented-data")
    else:
        cache_dir, cache_subdir = os.fspath(data_dir), ""
        # get_file silently falls back to /tmp/.keras for a directory that
        # does not exist yet.
        os.makedirs(cache_dir, exist_ok=True)
    return keras.utils.get_file(
        fname=fname,
        origin=origin,
        file_hash=sha256,
        hash_algorithm="sha256",
        cache_dir=cache_dir,
        cache_subdir=os.path.join(cache_subdir, subdir),
    )
