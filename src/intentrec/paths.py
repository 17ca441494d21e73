"""Where intentrec looks for data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """``$INTENTREC_DATA`` if set, else ``../shared/data`` relative to the working directory.

    When run from inside the repository checkout, ``../shared/data`` is the project's shared data.
    """
    env = os.environ.get("INTENTREC_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd().parent / "shared" / "data"]
    # The package may be used from another directory (tests, installed CLI): also try the
    # location relative to the source checkout.
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidates.append(parent.parent / "shared" / "data")
        if (parent / "pyproject.toml").exists():
            break
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def intentrec_home() -> Path:
    """Caches and the LLM answer store: ``$INTENTREC_HOME`` or ``~/.cache/intentrec``."""
    return Path(os.environ.get("INTENTREC_HOME", "~/.cache/intentrec")).expanduser()
