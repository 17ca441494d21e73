"""The CLI shell: usage errors and user errors are one message and exit status 2, never a traceback."""

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_unknown_option_is_a_usage_error_without_traceback(tmp_path):
    result = run_cli("evaluate", str(tmp_path), "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = run_cli("evaluate", str(tmp_path / "missing-run"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_version_and_help():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("intentrec ")
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    for command in ("prepare", "train", "evaluate", "recommend", "report", "embed", "infer", "intents", "cache"):
        assert command in help_text.stdout
