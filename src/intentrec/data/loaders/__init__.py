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
from intentrec.errors import ConfigError, DataError
from intentrec.paths import data_root
from intentrec.registry import import_modules

# Modules that register a loader on import, in the order messages list them.
_LOADER_MODULES = ("generic", "movielens", "amazon", "diginetica", "yoochoose", "amazon_m2")
import_modules("intentrec.data.loaders", _LOADER_MODULES)


def locate_inputs(source: str, path: str | Path) -> list[Path]:
    """The files ``load_source(source, path)`` would read."""
    loader = get_loader(source)
    return loader.locate(_checked(loader, path))


def load_source(
    source: str,
    path: str | Path,
    on_bad_line: BadLinePolicy = "error",
    *,
    locale: str | None = None,
) -> RawInteractions:
    """Parse the upstream files of ``source`` found at ``path`` (a folder or the main file).

    ``locale`` keeps one locale of a source that has several (its loader's ``locales``, e.g.
    amazon-m2); None reads every locale.
    """
    loader = get_loader(source)
    folder = _checked(loader, path)
    if locale is None:
        return loader.load(folder, BadLines(on_bad_line))
    check_locale(source, locale)
    return loader.load(folder, BadLines(on_bad_line), locale=locale)  # type: ignore[call-arg]


def check_locale(source: str, locale: str) -> None:
    """A ConfigError unless ``source`` has several locales and ``locale`` is one of them."""
    if source not in LOADERS:
        get_loader(source)  # the unknown-SOURCE error, with every official URL
    known = getattr(LOADERS.get(source), "locales", ())
    if not known:
        with_locales = [n for n in sources() if getattr(LOADERS.get(n), "locales", ())]
        raise ConfigError(
            f"locale applies only to sources with several locales ({', '.join(with_locales)}), not '{source}'"
        )
    if locale not in known:
        raise ConfigError(f"unknown locale '{locale}' of SOURCE '{source}' (known: {', '.join(known)})")


def source_defaults(source: str) -> dict[str, object]:
    """Prepare parameters a source sets by default (session strategy and its ``default_params``);
    empty for an unknown source (the loader reports that when it is used)."""
    if source not in LOADERS:
        return {}
    cls = LOADERS.get(source)
    return {"session": cls.default_session(), **cls.default_params}


def resolve_input_path(path: str | Path) -> Path:
    """``path``, or the same relative path under the data root when only that exists."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_absolute() and (data_root() / path).exists():
        path = data_root() / path  # a path relative to the data root, e.g. "movielens/ml-1m"
    return path


def _checked(loader: Loader, path: str | Path) -> Path:
    path = resolve_input_path(path)
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
    "check_locale",
    "get_loader",
    "load_source",
    "locate_inputs",
    "official_urls",
    "register_loader",
    "resolve_input_path",
    "source_defaults",
    "sources",
]
