"""Upstream dataset loaders, by SOURCE name. Each turns one published format into
:class:`~intentrec.data.loaders.base.RawInteractions`.

Every source is one class registered in :data:`LOADERS` (see :mod:`intentrec.data.loaders.registry`):
the files it reads, how it parses them, where they are published and how sessions are keyed.
"""

from __future__ import annotations

from pathlib import Path

from intentrec.data.loaders.base import BadLinePolicy, BadLines, RawInteractions
from intentrec.data.loaders.registry import (
    LOADERS,
    Download,
    Loader,
    OfficialFile,
    get_loader,
    official_urls,
    register_loader,
    sources,
)
from intentrec.errors import DataError
from intentrec.paths import data_root
from intentrec.registry import import_modules

# Modules that register a loader on import, in the order messages list them.
_LOADER_MODULES = ("generic", "movielens", "amazon", "diginetica", "yoochoose")
import_modules("intentrec.data.loaders", _LOADER_MODULES)


def locate_inputs(source: str, path: str | Path) -> list[Path]:
    """The files ``load_source(source, path)`` would read."""
    loader = get_loader(source)
    return loader.locate(_checked(loader, path))


def load_source(source: str, path: str | Path, on_bad_line: BadLinePolicy = "error") -> RawInteractions:
    """Parse the upstream files of ``source`` found at ``path`` (a folder or the main file)."""
    loader = get_loader(source)
    return loader.load(_checked(loader, path), BadLines(on_bad_line))


def source_defaults(source: str) -> dict[str, object]:
    """Prepare parameters a source sets by default (session strategy and its ``default_params``);
    empty for an unknown source (the loader reports that when it is used)."""
    if source not in LOADERS:
        return {}
    cls = LOADERS.get(source)
    return {"session": cls.default_session(), **cls.default_params}


def _checked(loader: Loader, path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists() and not path.is_absolute() and (data_root() / path).exists():
        path = data_root() / path  # a path relative to the data root, e.g. "movielens/ml-1m"
    if not path.exists():
        hint = f"$INTENTREC_DATA or ../shared/data, currently {data_root()}"
        raise DataError(
            f"{path} does not exist (data root: {hint}). Official download for '{loader.name}': {_urls_for(loader)}"
        )
    return path


def _urls_for(loader: Loader) -> str:
    return "; ".join(d.url for d in loader.downloads) or "none (bring your own interactions.csv)"


__all__ = [
    "LOADERS",
    "BadLines",
    "Download",
    "Loader",
    "OfficialFile",
    "RawInteractions",
    "get_loader",
    "load_source",
    "locate_inputs",
    "official_urls",
    "register_loader",
    "source_defaults",
    "sources",
]
