"""Crash-safe file output and folder locks.

Output is written to a temporary file in the same folder, then renamed over the target: a reader
never sees a half-written file; a crash leaves the old file (or nothing) in place. Long jobs that
write into a shared folder (a training run, a candidate file) hold an exclusive lock on a lock
file there, so two processes never write the same run at once; the kernel drops the lock when its
holder exits, kill -9 included, so a crashed job never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from intentrec.errors import InUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``target`` only if the block finishes."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(target, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def append_jsonl(target: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a completed record survives kill -9."""
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(
    lock_file: str | os.PathLike[str],
    *,
    what: str,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block; ``what`` names the guarded thing.

    If another process holds it: with ``wait=False`` raise ``InUseError`` naming that process; with
    ``wait=True`` call ``on_wait(holder)`` and block until it is free. The lock file stays (removing
    it would let a third process lock a new file while the second still waits on the old one).
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if not wait:
                    raise InUseError(
                        f"{what} is in use by {holder} (lock file {lock_file}); wait for it to "
                        "finish, or write somewhere else",
                        holder=holder,
                    ) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            fh.flush()
        yield
