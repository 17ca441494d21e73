import json

import pytest

from intentrec.io import append_jsonl, atomic_open, sha256_file, write_json


def test_atomic_open_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_write_json_and_append_jsonl(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    append_jsonl(tmp_path / "log.jsonl", {"e": 1})
    append_jsonl(tmp_path / "log.jsonl", {"e": 2})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["e"] for line in lines] == [1, 2]


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
