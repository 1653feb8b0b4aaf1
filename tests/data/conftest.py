"""Fixtures for the data-stage tests: paths to the realistic sample files and the shared law texts."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LAWS = Path(__file__).resolve().parents[2].parent / "shared/data/laws"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def laws() -> Path:
    if not LAWS.exists():
        pytest.skip("../shared/data/laws is not beside the checkout")
    return LAWS
