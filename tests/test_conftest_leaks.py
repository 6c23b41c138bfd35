"""The leak check (tests/leak_check.py) fails a session that leaves a process behind, and kills it.

Each case runs pytest in a subprocess on a generated test file, with the same plugin the suite uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

LEAKY = """
import subprocess
from pathlib import Path

def test_starts_a_child_and_forgets_it():
    Path("child.pid").write_text(str(subprocess.Popen(["sleep", "300"]).pid))
"""

TIDY = """
import subprocess

def test_starts_a_child_and_waits_for_it():
    subprocess.run(["sleep", "0.1"], check=True)
"""

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the leak check reads /proc")


def _inner_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(source)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "leak_check", "test_inner.py"]
    env = dict(os.environ, PYTHONPATH=str(TESTS))  # leak_check is imported from tests/
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not Path(f"/proc/{pid}").exists()


def test_a_leaked_child_fails_the_session_and_is_killed(tmp_path):
    out = _inner_pytest(tmp_path, LEAKY)
    pid = int((tmp_path / "child.pid").read_text())
    try:
        assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout + out.stderr
        assert "1 passed, 1 leaked" in out.stdout and "LEAKED PROCESSES" in out.stdout
        assert f"pid {pid}: sleep 300" in out.stdout
        assert _gone(pid), f"the leaked sleep (pid {pid}) is still alive"
    finally:
        if not _gone(pid, timeout=0):
            os.kill(pid, signal.SIGKILL)


def test_a_session_that_cleans_up_passes(tmp_path):
    out = _inner_pytest(tmp_path, TIDY)
    assert out.returncode == pytest.ExitCode.OK, out.stdout + out.stderr
    assert "LEAKED" not in out.stdout
