"""Shared fixtures: real data from ../shared/data (or $INTENTREC_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from intentrec.paths import data_root

torch.set_num_threads(min(2, torch.get_num_threads()))

FIXTURES = Path(__file__).parent / "fixtures"


def require_data(relative: str) -> Path:
    """Path of a file under the shared data root. Missing data fails in CI and skips elsewhere."""
    path = data_root() / relative
    if not path.exists():
        message = f"real data not found: {path} (set INTENTREC_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
