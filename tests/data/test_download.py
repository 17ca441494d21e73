"""``intentrec download`` against a real HTTP server on 127.0.0.1 (a thread in this process)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from intentrec.data.download import download, fetch_file
from intentrec.data.loaders import OfficialFile, load_source
from intentrec.errors import DataError

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """What the server holds and what it saw."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    truncate: dict[str, int] = field(default_factory=dict)  # name → bytes to send, once
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)
    sent: list[int] = field(default_factory=list)  # body bytes written per request

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


class _Handler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` support (206 / 416), optional truncation, no keep-alive."""

    def do_GET(self) -> None:  # the http.server API names it
        served: Served = self.server.served  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        requested = self.headers.get("Range")
        served.requests.append((name, requested))
        data = served.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and not served.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                # recorded before the reply goes out: the client may check as soon as it has it
                served.sent.append(0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))  # always the full length
        cut = served.truncate.pop(name, None)
        if cut is not None:
            body = body[:cut]  # then the connection closes: a response shorter than announced
        served.sent.append(len(body))  # before anything reaches the client, which may check at once
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.served = served  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_full_download_checks_sha256_and_shows_progress(server, tmp_path, capsys):
    server.files["a.bin"] = PAYLOAD
    path, fetched = fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), progress=True, timeout=10)
    assert fetched and path == tmp_path / "a.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("a.bin", None)]
    assert "a.bin" in capsys.readouterr().err  # the tqdm bar (size, rate, ETA) goes to stderr
    # a second call finds the file with the right digest and transfers nothing
    assert fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD)) == (path, False)
    assert len(server.requests) == 1


def test_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:4000])
    path, _ = fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), timeout=10)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("a.bin", "bytes=4000-")]
    assert server.sent == [len(PAYLOAD) - 4000]  # only the missing bytes travelled
    assert not (tmp_path / "a.bin.part").exists()


def test_complete_partial_file_is_finished_without_a_transfer(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    path, _ = fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), timeout=10)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("a.bin", f"bytes={len(PAYLOAD)}-")] and server.sent == [0]


def test_server_ignoring_range_restarts_from_the_beginning(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"x" * 3000)  # not even the right bytes
    path, _ = fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), timeout=10)
    assert path.read_bytes() == PAYLOAD  # the old partial content was dropped, not appended to
    assert server.requests == [("a.bin", "bytes=3000-")] and server.sent == [len(PAYLOAD)]


def test_truncated_response_keeps_the_part_file_and_the_next_call_completes(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    server.truncate["a.bin"] = 3000
    with pytest.raises(DataError, match=r"cut short: 3,000 of 10,240 bytes.*a\.bin\.part is kept"):
        fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), timeout=10)
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.part").read_bytes() == PAYLOAD[:3000]
    path, fetched = fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD), timeout=10)
    assert fetched and path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("a.bin", "bytes=3000-")
    assert server.sent == [3000, len(PAYLOAD) - 3000]


def test_wrong_checksum_names_file_and_digests_and_leaves_nothing(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    expected = "0" * 64
    with pytest.raises(DataError) as err:
        fetch_file(server.url("a.bin"), tmp_path, sha256=expected, timeout=10)
    message = str(err.value)
    assert "a.bin" in message and expected in message and sha256(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []  # neither a.bin nor a.bin.part


def test_existing_file_with_another_digest_is_not_replaced(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    (tmp_path / "a.bin").write_bytes(b"mine")
    with pytest.raises(DataError, match=r"a\.bin: exists, but its sha256 is .*delete it"):
        fetch_file(server.url("a.bin"), tmp_path, sha256=sha256(PAYLOAD))
    assert (tmp_path / "a.bin").read_bytes() == b"mine" and server.requests == []


def _movielens_zip(top: str = "ml-latest-small") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{top}/", "")
        zf.writestr(
            f"{top}/ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.0,200\n2,10,5.0,300\n",
        )
        zf.writestr(f"{top}/movies.csv", "movieId,title,genres\n10,Alpha (1999),Drama\n20,Beta,\n")
        zf.writestr(f"{top}/README.txt", "fixture\n")
    return buffer.getvalue()


def test_zip_is_kept_and_extracted_into_dest(server, tmp_path):
    archive = _movielens_zip()
    server.files["ml-latest-small.zip"] = archive
    dest = tmp_path / "movielens" / "ml-latest-small"
    outcome = download("movielens", dest, variant="ml-latest-small", base_url=server.base + "/")
    assert outcome.dest == dest and outcome.variant == "ml-latest-small"
    assert (dest / "ml-latest-small.zip").read_bytes() == archive
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        "README.txt",
        "ml-latest-small.zip",
        "movies.csv",
        "ratings.csv",
    ]
    assert not [p for p in dest.iterdir() if p.name.endswith((".extract", ".part"))]
    raw = load_source("movielens", dest)  # what prepare reads
    assert raw.variant == "ml-latest" and len(raw.events) == 3
    # again: the zip is there and extracted, nothing is transferred or rewritten
    again = download("movielens", dest, variant="ml-latest-small", base_url=server.base)
    assert again.fetched == [] and again.extracted == [] and len(server.requests) == 1


def test_zip_with_known_digest_through_the_file_list(server, tmp_path):
    archive = _movielens_zip("ml-1m-like")
    server.files["x.zip"] = archive
    files = [OfficialFile(server.url("x.zip"), sha256=sha256(archive))]
    outcome = download("movielens", tmp_path, files=files)
    assert outcome.fetched == [tmp_path / "x.zip"]
    assert (tmp_path / "ratings.csv").is_file() and not (tmp_path / "ml-1m-like").exists()


def test_zip_member_outside_dest_is_refused(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../evil.txt", "x")
    server.files["ml-latest-small.zip"] = buffer.getvalue()
    with pytest.raises(DataError, match=r"unsafe"):
        download("movielens", tmp_path / "d", variant="ml-latest-small", base_url=server.base)
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("source", ["diginetica", "yoochoose", "amazon"])
def test_source_without_direct_urls_says_to_use_a_browser(source, tmp_path):
    dest = tmp_path / "here"
    with pytest.raises(DataError) as err:
        download(source, dest)
    message = str(err.value)
    assert "browser" in message and "https://" in message and str(dest) in message
    assert f"intentrec prepare {source}" in message
    assert not dest.exists()  # nothing was written


def test_generic_and_unknown_sources_have_no_download(tmp_path):
    with pytest.raises(DataError, match=r"'generic' has no official download"):
        download("generic", tmp_path)
    with pytest.raises(DataError, match=r"(?s)unknown SOURCE 'lastfm'.*files\.grouplens\.org"):
        download("lastfm", tmp_path)
    with pytest.raises(DataError, match=r"unknown variant 'ml-2m'.*ml-100k"):
        download("movielens", tmp_path, variant="ml-2m")


# --- the command ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", "download", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cli_download_end_to_end(server, tmp_path):
    server.files["ml-latest-small.zip"] = _movielens_zip()
    dest = tmp_path / "ml-small"
    result = _cli(
        "movielens",
        "--variant",
        "ml-latest-small",
        "--mirror",
        server.base + "/",
        "--dest",
        str(dest),
        "--timeout",
        "10",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(dest / "ml-latest-small.zip")
    assert f"intentrec prepare movielens {dest}" in result.stderr
    assert (dest / "ratings.csv").is_file() and (dest / "movies.csv").is_file()


def test_cli_checksum_mismatch_and_browser_sources_exit_2(server, tmp_path):
    server.files["ml-1m.zip"] = _movielens_zip("ml-1m")  # not the real archive: wrong digest
    result = _cli("movielens", "--mirror", server.base, "--dest", str(tmp_path / "m"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ml-1m.zip: sha256 mismatch: expected a6898adb" in result.stderr
    assert not (tmp_path / "m" / "ml-1m.zip").exists()
    browser = _cli("diginetica", "--dest", str(tmp_path / "dn"))
    assert browser.returncode == 2 and browser.stderr.startswith("error: ")
    assert "competitions.codalab.org" in browser.stderr and "browser" in browser.stderr


def test_cli_help_has_examples():
    result = _cli("--help")
    assert result.returncode == 0
    assert "intentrec download movielens --variant ml-100k" in result.stdout
    assert "--mirror" in result.stdout
