"""Test set-up: quiet TensorFlow, and where the shared data lives."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir():
    """`../shared` beside the repository (tests and CI read data from there)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: these tests need ../shared beside the repository")
    return SHARED
