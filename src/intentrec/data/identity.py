"""What identifies a prepared dataset, independent of when and where it was prepared.

A run record names the dataset it was trained on. The sha256 of ``manifest.json`` alone is too strict
for that: the manifest also holds the preparation time, its duration and the absolute paths of the
inputs, so preparing the very same files again on a fresh machine (or from another folder) would make
every earlier record look like it came from another dataset. The *fingerprint* hashes the rest of the
manifest: the inputs' sha256 and sizes, source, protocol, parameters, statistics, notes, format and
library version. Two preparations agree on it exactly when they agree on everything that decides the
tables' contents.

Records written before fingerprints existed carry only ``manifest_sha256``;
:meth:`DatasetIdentity.matches` falls back to it for them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intentrec.data import schema
from intentrec.errors import DataError
from intentrec.io import sha256_file

# manifest fields that say when, how fast or from which folder a dataset was prepared, not what it is
_VOLATILE_TOP = ("created",)
_VOLATILE_STATISTICS = ("seconds",)
_VOLATILE_INPUT = ("path",)


def fingerprint(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest without its volatile fields, as canonical JSON."""
    content = copy.deepcopy(dict(manifest))
    for key in _VOLATILE_TOP:
        content.pop(key, None)
    statistics = content.get("statistics")
    if isinstance(statistics, dict):
        for key in _VOLATILE_STATISTICS:
            statistics.pop(key, None)
    for entry in content.get("inputs") or []:
        if isinstance(entry, dict):
            for key in _VOLATILE_INPUT:
                entry.pop(key, None)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DatasetIdentity:
    manifest_sha256: str  # the manifest file's bytes
    fingerprint: str  # what the dataset is (see the module docstring)

    @classmethod
    def of(cls, dataset_dir: str | Path) -> DatasetIdentity:
        path = Path(dataset_dir) / schema.MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"manifest is not valid JSON: {exc}", path=path) from None
        return cls(sha256_file(path), fingerprint(manifest))

    def matches(self, recorded: Mapping[str, Any]) -> bool:
        """Whether a record's ``dataset`` section names this dataset (fingerprint, else manifest sha256)."""
        if recorded.get("fingerprint"):
            return recorded["fingerprint"] == self.fingerprint
        return recorded.get("manifest_sha256") == self.manifest_sha256
