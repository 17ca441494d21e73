import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from intentrec.errors import IntentrecError
from intentrec.io import append_jsonl, atomic_open, exclusive_lock, sha256_file, write_json


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


def test_exclusive_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with exclusive_lock(lock, what="run folder X"):
        with pytest.raises(IntentrecError, match=rf"run folder X is in use by pid {os.getpid()} since .*{lock.name}"):
            with exclusive_lock(lock, what="run folder X"):
                pass
    with exclusive_lock(lock, what="run folder X"):  # released on exit
        assert lock.read_text().startswith(f"pid {os.getpid()} ")


def test_exclusive_lock_can_wait_for_the_holder(tmp_path):
    lock = tmp_path / ".lock"
    held, events = threading.Event(), []

    def holder():
        with exclusive_lock(lock, what="x"):
            held.set()
            time.sleep(0.4)
            events.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with exclusive_lock(lock, what="x", wait=True, on_wait=lambda who: events.append(f"waiting for {who[:3]}")):
        events.append("acquired")
    thread.join()
    assert events == ["waiting for pid", "released", "acquired"]


def test_a_lock_dies_with_its_process_even_after_kill_9(tmp_path):
    lock = tmp_path / ".lock"
    script = textwrap.dedent(
        f"""
        import sys
        from intentrec.io import exclusive_lock
        with exclusive_lock({str(lock)!r}, what="x"):
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(IntentrecError, match=f"in use by pid {proc.pid} "):
            with exclusive_lock(lock, what="x"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with exclusive_lock(lock, what="x"):
        pass
