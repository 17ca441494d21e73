"""Fetching a source's official files (``intentrec download``), for users who have internet.

Nothing else in intentrec goes online: ``prepare`` only reads local files. Python API::

    from intentrec.data.download import download
    outcome = download("movielens", variant="ml-1m")      # into <data root>/movielens/ml-1m
    outcome.dest                                          # then: prepare_dataset("movielens", outcome.dest, ...)

A file is fetched into ``NAME.part`` next to its final name and renamed only once it is complete and
its sha256 (where one is known) matches, so the final name never holds a half-written file. A
``.part`` left by an interrupted download is resumed with an HTTP Range request; a server that
ignores the range (answers 200) makes the download start again from byte 0. A response shorter than
its Content-Length is an error that keeps the ``.part`` for the next call to resume. Zip archives are
kept and also extracted into the destination: into a temporary folder first, then moved into place
(a single top-level folder of the archive, like ``ml-1m/``, is stripped).

Sources whose data sits behind a login, a form or a page of links raise a :class:`DataError` that
names the official page, the files to fetch in a browser and the folder to put them in.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from intentrec import __version__
from intentrec.data.loaders import Download, Loader, OfficialFile, get_loader
from intentrec.errors import ConfigError, DataError
from intentrec.io import exclusive_lock, sha256_file
from intentrec.paths import data_root

CHUNK_BYTES = 1 << 16
LOCK_NAME = ".intentrec-download.lock"


@dataclass
class DownloadOutcome:
    source: str
    variant: str
    dest: Path  # the folder to pass to ``intentrec prepare SOURCE``
    files: list[Path] = field(default_factory=list)  # the fetched (or already present) files
    fetched: list[Path] = field(default_factory=list)  # those transferred by this call
    extracted: list[Path] = field(default_factory=list)  # entries moved into ``dest`` from archives


def default_dest(source: str, variant: str | None = None) -> Path:
    """Where ``prepare`` looks for ``source`` under the data root (e.g. ``movielens/ml-1m``)."""
    loader = get_loader(source)
    entry = loader.download(variant)
    if entry is None:
        raise _no_download(loader)
    return data_root() / entry.folder


def download(
    source: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    variant: str | None = None,
    base_url: str | None = None,
    files: Sequence[OfficialFile] | None = None,
    progress: bool | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> DownloadOutcome:
    """Fetch the official files of ``source`` (its ``variant``, default the first) into ``dest``.

    ``dest`` defaults to the folder ``prepare`` expects under the data root. ``base_url`` fetches
    every file from ``base_url/NAME`` instead of the official host (a mirror holding the same files;
    sha256 digests are still checked). ``files`` replaces the official file list (URLs and digests).
    ``progress``: True/False shows/hides the progress bar, None shows it on a terminal only.
    """
    log = log or (lambda message: None)
    loader = get_loader(source)
    entry = loader.download(variant)
    if entry is None:
        raise _no_download(loader)
    target = Path(dest).expanduser() if dest is not None else data_root() / entry.folder
    wanted = tuple(files) if files is not None else entry.files
    if not wanted:
        raise _needs_browser(loader, entry if variant else None, target if dest else None)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"--mirror must be an http:// or https:// URL, got {base_url!r}")
    _make_folder(target)
    outcome = DownloadOutcome(source, entry.key, target)
    with exclusive_lock(target / LOCK_NAME, what=f"download folder {target}"):
        for official in wanted:
            url = official.url
            if base_url is not None:
                url = f"{base_url.rstrip('/')}/{official.name}"
            path, fetched = fetch_file(
                url,
                target,
                name=official.name,
                sha256=official.sha256,
                progress=progress,
                timeout=timeout,
                log=log,
            )
            outcome.files.append(path)
            if fetched:
                outcome.fetched.append(path)
            if path.name.endswith(".zip"):
                outcome.extracted.extend(extract_zip(path, target, log=log))
    return outcome


def fetch_file(
    url: str,
    folder: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    progress: bool | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, bool]:
    """Download ``url`` to ``folder/name`` (resuming ``name.part``); (path, whether it was fetched).

    An existing final file is kept when its digest matches (or none is known).
    """
    log = log or (lambda message: None)
    name = name or url.rstrip("/").rsplit("/", 1)[-1]
    final = folder / name
    part = folder / f"{name}.part"
    if final.is_file():
        if sha256 is None:
            log(f"{final}: already there")
            return final, False
        actual = sha256_file(final)
        if actual == sha256:
            log(f"{final}: already there (sha256 checked)")
            return final, False
        raise DataError(
            f"exists, but its sha256 is {actual}, expected {sha256}; delete it to download it again",
            path=final,
        )
    log(f"fetching {url} → {final}")
    # At most two requests: the second only after the server refused to resume the .part.
    for _attempt in range(2):
        if _transfer(url, part, name, progress=progress, timeout=timeout, log=log):
            break
    else:  # pragma: no cover - a server that refuses every resume twice in a row
        raise DataError(f"cannot download {url}: the server refused to resume twice")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink(missing_ok=True)
            raise DataError(
                f"{name}: sha256 mismatch: expected {sha256}, got {actual} (downloaded from "
                f"{url}); the downloaded file was removed, nothing was written to {final}"
            )
    os.replace(part, final)
    return final, True


def _transfer(
    url: str,
    part: Path,
    name: str,
    *,
    progress: bool | None,
    timeout: float,
    log: Callable[[str], None],
) -> bool:
    """One request into ``part``; False when the caller should try again from byte 0."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"intentrec/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # Range Not Satisfiable: the .part is complete, or stale
            total = _range_total(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                return True
            log(f"{part.name} does not fit the file on the server; starting again")
            part.unlink(missing_ok=True)
            return False
        exc.close()
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DataError(f"cannot download {url}: {_reason(exc)}{_kept(part)}") from None
    with response:
        mode = "wb"
        total = _int(response.headers.get("Content-Length"))
        if offset and response.status == 206:
            start, full = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                log(f"{url}: the server answered another range; starting again")
                part.unlink(missing_ok=True)
                return False
            mode = "ab"
            total = full if full is not None else (offset + total if total is not None else None)
        else:
            if offset:
                log(f"{url}: the server does not resume downloads; starting again from byte 0")
            offset = 0
        _stream(response, part, mode, offset, total, name, progress=progress, url=url)
    return True


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    name: str,
    *,
    progress: bool | None,
    url: str,
) -> None:
    from tqdm import tqdm

    received = offset
    with (
        open(part, mode) as fh,
        tqdm(
            total=total,
            initial=offset,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None if progress is None else not progress,
            leave=False,
        ) as bar,
    ):
        try:
            while block := response.read(CHUNK_BYTES):
                fh.write(block)
                received += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
            fh.flush()
            raise DataError(
                f"download of {url} broke off after {received:,} bytes: {_reason(exc)}{_kept(part)}"
            ) from None
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and received < total:
        raise DataError(f"download of {url} was cut short: {received:,} of {total:,} bytes arrived{_kept(part)}")
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise DataError(
            f"download of {url} sent {received:,} bytes, more than the announced {total:,}; "
            "the downloaded file was removed"
        )


def extract_zip(archive: Path, dest: Path, *, log: Callable[[str], None] | None = None) -> list[Path]:
    """Extract ``archive`` into ``dest`` (its single top-level folder stripped); the entries placed.

    Everything is extracted into a temporary folder inside ``dest`` first, then each top-level entry is
    renamed into place, replacing an earlier copy. Nothing is done when every file is already there
    with its size. Members with absolute paths or ``..`` are refused.
    """
    log = log or (lambda message: None)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip archive ({exc}); delete it to download it again", path=archive) from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        for member in members:
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in member.filename:
                raise DataError(f"archive member {member.filename!r} is unsafe", path=archive)
        tops = {PurePosixPath(m.filename).parts[0] for m in members if m.filename.strip("/")}
        strip = None
        if len(tops) == 1 and any("/" in m.filename.strip("/") for m in members):
            strip = tops.pop()

        def placed(member: zipfile.ZipInfo) -> Path:
            rel = PurePosixPath(member.filename)
            if strip is not None:
                rel = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 else PurePosixPath()
            return dest.joinpath(*rel.parts)

        files = [m for m in members if not m.is_dir()]
        if files and all(placed(m).is_file() and placed(m).stat().st_size == m.file_size for m in files):
            log(f"{archive.name}: already extracted into {dest}")
            return []
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=dest))
        try:
            try:
                zf.extractall(tmp, members=members)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataError(f"cannot extract: {exc}", path=archive) from None
            root = tmp / strip if strip is not None else tmp
            moved = []
            for entry in sorted(root.iterdir()):
                target = dest / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
                moved.append(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{archive.name}: extracted {len(moved)} entries into {dest}")
    return moved


# --- messages -----------------------------------------------------------------------------------


def _no_download(loader: Loader) -> DataError:
    return DataError(
        f"SOURCE '{loader.name}' has no official download: it reads your own files "
        "(interactions.csv|.parquet and optionally items.csv|.parquet; see docs/data.md)"
    )


def _needs_browser(loader: Loader, entry: Download | None, dest: Path | None) -> DataError:
    """The official page(s), what to fetch there and where to put it."""
    entries = [entry] if entry is not None else list(loader.downloads)
    lines = [
        (
            f"SOURCE '{loader.name}' cannot be downloaded by intentrec: its files must be fetched "
            "in a browser from the official page."
        )
    ]
    for item in entries:
        folder = dest if dest is not None else data_root() / item.folder
        lines.append(
            f"  {item.key}: open {item.page} ({item.how}); put {item.expect} into {folder}/ and "
            f"run: intentrec prepare {loader.name} {folder} --out DIR"
        )
    return DataError("\n".join(lines))


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as exc:
        raise DataError(
            f"cannot write to {folder}: {exc.strerror or exc} (choose another folder with --dest)"
        ) from None


def _kept(part: Path) -> str:
    if part.is_file() and part.stat().st_size:
        return f"; the partial file {part} is kept: run the same command again to resume"
    return ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed early"
    return str(exc) or type(exc).__name__


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, full size) of ``bytes FIRST-LAST/SIZE``; None where absent or ``*``."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, size = value[len("bytes ") :].partition("/")
    first = _int(span.partition("-")[0]) if span != "*" else None
    return first, _int(size)


def _range_total(value: str | None) -> int | None:
    return _content_range(value)[1]
