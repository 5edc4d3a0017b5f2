"""Shared fixtures: where the independent test vectors live."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """../shared/vectors: real hardware evidence published by other projects (see its README)."""
    if not VECTORS.is_dir():
        pytest.skip("../shared/vectors is not present beside this checkout")
    return VECTORS
