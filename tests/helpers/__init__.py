"""Helpers shared by the test folders, imported as ``tests.helpers.<module>``.

pytest puts the repository root on ``sys.path`` (``pythonpath`` in pyproject.toml); a child Python
that a test starts gets the same through :func:`child_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child Python that imports ``tests.helpers``: the repository root leads PYTHONPATH."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}
