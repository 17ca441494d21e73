"""Shared fixtures: real data from ../shared/data (or $INTENTREC_DATA).

Helper functions live in the package ``tests.helpers`` (``from tests.helpers.data import ...``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.data import FIXTURES

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-tensor tests: extra threads only add contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
