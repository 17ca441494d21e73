"""Upstream dataset loaders, by SOURCE name. Each turns one published format into
:class:`~intentrec.data.loaders.base.RawInteractions`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from intentrec.data.loaders.amazon import find_reviews, load_amazon
from intentrec.data.loaders.base import BadLinePolicy, BadLines, RawInteractions
from intentrec.data.loaders.diginetica import load_diginetica, locate_diginetica
from intentrec.data.loaders.generic import load_generic, locate_generic
from intentrec.data.loaders.movielens import detect_variant, load_movielens
from intentrec.data.loaders.yoochoose import load_yoochoose, locate_yoochoose
from intentrec.errors import DataError
from intentrec.paths import OFFICIAL_URLS, data_root

Loader = Callable[[Path, BadLines], RawInteractions]

LOADERS: dict[str, Loader] = {
    "generic": load_generic,
    "movielens": load_movielens,
    "amazon": load_amazon,
    "diginetica": load_diginetica,
    "yoochoose": load_yoochoose,
}


#: The input files a source reads at a path (without parsing them), for hashing and reuse checks.
LOCATORS: dict[str, Callable[[Path], list[Path]]] = {
    "generic": lambda p: [f for f in locate_generic(p) if f is not None],
    "movielens": lambda p: [f for f in detect_variant(p)[1:] if f is not None],
    "amazon": lambda p: [f for f in find_reviews(p)[1:] if f is not None],
    "diginetica": lambda p: [locate_diginetica(p)],
    "yoochoose": lambda p: [locate_yoochoose(p)],
}


def locate_inputs(source: str, path: str | Path) -> list[Path]:
    """The files ``load_source(source, path)`` would read."""
    path = _checked(source, path)
    return LOCATORS[source](path)


def load_source(
    source: str, path: str | Path, on_bad_line: BadLinePolicy = "error"
) -> RawInteractions:
    """Parse the upstream files of ``source`` found at ``path`` (a folder or the main file)."""
    path = _checked(source, path)
    return LOADERS[source](path, BadLines(on_bad_line))


def _checked(source: str, path: str | Path) -> Path:
    if source not in LOADERS:
        urls = "\n".join(f"  {name}: {url}" for name, url in OFFICIAL_URLS.items())
        raise DataError(
            f"unknown SOURCE '{source}' (known: {', '.join(LOADERS)}). Official downloads:\n{urls}"
        )
    path = Path(path).expanduser()
    if not path.exists() and not path.is_absolute() and (data_root() / path).exists():
        path = data_root() / path  # a path relative to the data root, e.g. "movielens/ml-1m"
    if not path.exists():
        hint = f"$INTENTREC_DATA or ../shared/data, currently {data_root()}"
        raise DataError(
            f"{path} does not exist (data root: {hint}). Official download for '{source}': "
            f"{_urls_for(source)}"
        )
    return path


def _urls_for(source: str) -> str:
    keys = {
        "amazon": ["amazon-2014", "amazon-2018"],
        "movielens": ["ml-1m", "ml-100k", "ml-latest-small"],
        "diginetica": ["diginetica"],
        "yoochoose": ["yoochoose"],
    }.get(source, [])
    return "; ".join(OFFICIAL_URLS[k] for k in keys) or "none (bring your own interactions.csv)"


__all__ = ["LOADERS", "BadLines", "RawInteractions", "load_source", "locate_inputs"]
