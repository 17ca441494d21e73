"""A prepared dataset's fingerprint: the same files prepared again agree, other contents do not."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from intentrec.data.identity import DatasetIdentity, fingerprint
from intentrec.data.prepare import prepare_dataset
from intentrec.errors import DataError
from tests.helpers.data import fixture_data

DATA = fixture_data()
TINY = dict(min_item_support=1, min_session_length=2, test_fraction=0.3, valid_fraction=0.5)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_preparing_the_same_files_elsewhere_later_keeps_the_fingerprint(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(DATA / "generic", copy)
    first = prepare_dataset("generic", DATA / "generic", tmp_path / "a", **TINY)
    again = prepare_dataset("generic", copy, tmp_path / "b", **TINY)
    # another input folder, so the manifests differ as files ...
    assert first.manifest["inputs"][0]["path"] != again.manifest["inputs"][0]["path"]
    a, b = DatasetIdentity.of(first.path), DatasetIdentity.of(again.path)
    assert a.manifest_sha256 != b.manifest_sha256
    # ... and name one dataset
    assert a.fingerprint == b.fingerprint
    assert a.matches({"fingerprint": b.fingerprint, "manifest_sha256": b.manifest_sha256})
    assert not a.matches({"manifest_sha256": b.manifest_sha256})  # an old record: the file's sha only
    assert a.matches({"manifest_sha256": a.manifest_sha256})


def test_the_fingerprint_ignores_only_when_how_fast_and_where(tmp_path):
    ds = prepare_dataset("generic", DATA / "generic", tmp_path / "a", **TINY)
    manifest = json.loads((ds.path / "manifest.json").read_text())
    base = fingerprint(manifest)
    volatile = json.loads(json.dumps(manifest))
    volatile["created"] = "1999-01-01T00:00:00Z"
    volatile["statistics"]["seconds"] = 123.0
    volatile["inputs"][0]["path"] = "/elsewhere/interactions.csv"
    assert fingerprint(volatile) == base
    for change in (
        lambda m: m["inputs"][0].update(sha256="0" * 64),
        lambda m: m["parameters"].update(min_session_length=3),
        lambda m: m["statistics"].update(test_examples=m["statistics"]["test_examples"] + 1),
        lambda m: m.update(protocol="another"),
    ):
        other = json.loads(json.dumps(manifest))
        change(other)
        assert fingerprint(other) != base
    assert fingerprint(manifest) == base  # not mutated


def test_a_broken_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{truncated")
    with pytest.raises(DataError, match="manifest is not valid JSON"):
        DatasetIdentity.of(tmp_path)


def test_other_filter_settings_change_the_fingerprint(tmp_path):
    a = prepare_dataset("generic", DATA / "generic", tmp_path / "a", **TINY)
    b = prepare_dataset("generic", DATA / "generic", tmp_path / "b", **{**TINY, "augment": "last"})
    assert DatasetIdentity.of(a.path).fingerprint != DatasetIdentity.of(b.path).fingerprint
    assert _sha(a.path / "manifest.json") != _sha(b.path / "manifest.json")
