"""The real data under the shared data root, and the hand-written loader fixtures."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from intentrec.paths import data_root

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def require_data(relative: str) -> Path:
    """Path of a file under the shared data root. Missing data fails in CI and skips elsewhere."""
    path = data_root() / relative
    if not path.exists():
        message = f"real data not found: {path} (set INTENTREC_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.lru_cache(maxsize=1)
def fixture_data() -> Path:
    """The hand-written loader fixtures, copied once per test process into a temporary folder.

    Fixtures whose upstream file name looks like a real dataset (``ratings.dat``, ``u.data``, …) are
    stored as ``STEM_EXT.fixture`` (``ratings_dat.fixture``) so the repository never tracks files named
    like datasets; the copy gets the upstream names back, which the loaders detect.
    """
    target = Path(tempfile.mkdtemp(prefix="intentrec-fixtures-")) / "data"
    shutil.copytree(FIXTURES / "data", target)
    for path in target.rglob("*.fixture"):
        stem, _, ext = path.name.removesuffix(".fixture").rpartition("_")
        path.rename(path.with_name(f"{stem}.{ext}"))
    return target
