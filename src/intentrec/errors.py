"""User-facing errors.

Anything a user can cause (a bad file, an unknown config key, a missing dataset) is raised as an
``IntentrecError`` with a message that names the file, line or field. The CLI prints the message and
exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class IntentrecError(Exception):
    """An error caused by user input or environment, with a message meant for people."""


class DataError(IntentrecError):
    """Malformed or unusable input data; the message names the file and, where known, the line."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ConfigError(IntentrecError):
    """An invalid configuration: unknown key, wrong type or out-of-range value."""


class InUseError(IntentrecError):
    """Another process holds the lock on a run folder or output file; ``holder`` names it."""

    def __init__(self, message: str, *, holder: str):
        super().__init__(message)
        self.holder = holder
