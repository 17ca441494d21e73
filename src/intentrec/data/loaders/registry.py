"""One registered class per upstream SOURCE: the files it reads, how it parses them, where they are
published, and how prepare treats it by default.

A loader class declares:

* ``name`` — the SOURCE name on the command line (``@register_loader`` registers the class under it);
* ``key_kind`` — what the key of its interactions is: ``"user"`` (a user's history, cut into sessions
  by the session strategy) or ``"session"`` (the file's own session ids);
* ``locate(path)`` — the files ``load`` would read at ``path``, without parsing them;
* ``load(path, bad)`` — the parsed :class:`~intentrec.data.loaders.base.RawInteractions`;
* ``downloads`` — where each variant is officially published (:class:`Download`);
* ``default_params`` — source-specific defaults of ``intentrec prepare`` parameters, below a protocol
  and explicit flags (the default session strategy follows from ``key_kind``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from intentrec.data.loaders.base import BadLines, RawInteractions
from intentrec.errors import DataError
from intentrec.registry import Registry


@dataclass(frozen=True)
class OfficialFile:
    """A file that can be fetched directly (no login, no form)."""

    url: str
    sha256: str | None = None  # None where the publisher re-issues the file under the same name
    size: int | None = None  # bytes, where known

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Download:
    """Where one variant of a source is published and where ``prepare`` expects its files.

    ``files`` are directly downloadable (``intentrec download`` fetches them); without them the data
    is only offered on ``page`` (a login, a form or a page of links) and must be fetched in a browser.
    """

    key: str  # e.g. "ml-1m", "amazon-2014"
    page: str  # the official page
    folder: str  # folder under the data root that prepare reads, e.g. "movielens/ml-1m"
    files: tuple[OfficialFile, ...] = ()
    expect: str = ""  # for browser-only data: which files to put into the folder
    how: str = ""  # for browser-only data: what the page asks for (login, form, archive format)

    @property
    def url(self) -> str:
        """The one address shown in messages: the file when there is exactly one, else the page."""
        return self.files[0].url if len(self.files) == 1 else self.page

    @property
    def needs_browser(self) -> bool:
        return not self.files


class Loader:
    """Base class of the registered loaders (instances are stateless)."""

    name: ClassVar[str]
    key_kind: ClassVar[Literal["session", "user"]]
    downloads: ClassVar[tuple[Download, ...]] = ()
    #: Source-specific prepare defaults (PrepareConfig fields); the current sources have none.
    default_params: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def locate(self, path: Path) -> list[Path]:
        raise NotImplementedError

    def load(self, path: Path, bad: BadLines) -> RawInteractions:
        raise NotImplementedError

    @classmethod
    def default_session(cls) -> str:
        """``given`` for sources whose files hold session ids, ``user`` for user-keyed sources."""
        return "given" if cls.key_kind == "session" else "user"

    @classmethod
    def download(cls, key: str | None = None) -> Download | None:
        """The published variant ``key`` (default: the first), or None when there is none."""
        if not cls.downloads:
            return None
        if key is None:
            return cls.downloads[0]
        for entry in cls.downloads:
            if entry.key == key:
                return entry
        known = ", ".join(d.key for d in cls.downloads)
        raise DataError(f"unknown variant '{key}' of SOURCE '{cls.name}' (known: {known})")


LOADERS: Registry[Loader] = Registry("SOURCE")
_ORDER: list[str] = []  # registration order, for messages (the registry lists names sorted)


def register_loader(cls: type[Loader]) -> type[Loader]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    LOADERS.register(cls.name)(cls)
    if cls.name not in _ORDER:
        _ORDER.append(cls.name)
    return cls


def sources() -> list[str]:
    """SOURCE names, in registration order."""
    return list(_ORDER)


def official_urls() -> dict[str, str]:
    """Variant key → official address, over every source (what error messages point to)."""
    return {d.key: d.url for name in _ORDER for d in LOADERS.get(name).downloads}


def get_loader(source: str) -> Loader:
    """The loader of ``source``; an unknown name lists the known ones and every official URL."""
    if source not in LOADERS:
        urls = "\n".join(f"  {key}: {url}" for key, url in official_urls().items())
        raise DataError(f"unknown SOURCE '{source}' (known: {', '.join(_ORDER)}). Official downloads:\n{urls}")
    return LOADERS.get(source)()
