"""Shared test fixtures.

Real-data checks read ``../shared/data`` in place (never copied into the project) and skip with a
clear reason where it is absent, as on a user's fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NRIQA_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests run on 2 CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or skip the test with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (set NRIQA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def labels_dir(shared_data: Path) -> Path:
    path = shared_data / "labels"
    if not path.is_dir():
        pytest.skip(f"real label files not available: {path} is absent")
    return path
