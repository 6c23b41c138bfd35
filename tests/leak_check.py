"""pytest plugin: the session fails when a process it started outlives it (Linux, /proc).

Why: a `ray::Runner` left behind by the suite was seen alive half an hour after `make test` ended,
holding 250 MB and ignoring SIGTERM. On import this puts a fresh token into `VLMQ_TEST_SESSION`; every
process the session starts inherits it (Ray's workers too: they inherit the raylet's environment,
which inherits the driver's). When the session ends and Ray is shut down, any process whose
/proc/<pid>/environ still carries the token is a leak: it is listed, the run fails, and it is killed
so that even a failing run leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

MARKER = "VLMQ_TEST_SESSION"
GRACE_S = 5.0  # actor processes take a moment to notice that their raylet is gone

TOKEN = uuid.uuid4().hex
# Appended, not replaced: a pytest run inside a test keeps the outer session's token as well, so the
# outer check also catches what the inner run leaves behind.
os.environ[MARKER] = f"{os.environ.get(MARKER, '')} {TOKEN}".strip()

_PROC = Path("/proc")
_leaks: dict[int, str] = {}
_skipped = ""


def _parent(pid: int) -> int:
    try:  # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces and parentheses
        return int((_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _self_and_ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 0 and pid not in pids:
        pids.add(pid)
        pid = _parent(pid)
    return pids


# multiprocessing's helpers of this process: they read a pipe from it and exit when it exits.
_HELPERS = (
    "from multiprocessing.resource_tracker import main",
    "from multiprocessing.forkserver import main",
)


def _carries(environ: bytes, token: str) -> bool:
    prefix = f"{MARKER}=".encode()
    return any(
        var.startswith(prefix) and token.encode() in var[len(prefix) :].split()
        for var in environ.split(b"\0")
    )


def session_processes(token: str = TOKEN) -> dict[int, str]:
    """pid -> command line of every live process but this one and its ancestors carrying `token`.

    Processes that cannot be read (another user's, already gone, zombies) are skipped, and so are
    this process's multiprocessing helpers, which end with it.
    """
    skip, found = _self_and_ancestors(), {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        pid = int(entry.name)
        if _carries(environ, token) and not (any(h in cmd for h in _HELPERS) and _parent(pid) == os.getpid()):
            found[pid] = cmd
    return found


def wait_for_exit(grace_s: float = GRACE_S, token: str = TOKEN) -> dict[int, str]:
    """The session's processes still alive after up to `grace_s` seconds of polling."""
    deadline = time.monotonic() + grace_s
    while (alive := session_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _shutdown_ray() -> None:
    """A test or fixture that left Ray initialised would otherwise be reported for the whole cluster."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Runs after every fixture's teardown: what is alive now (and a moment later) leaked."""
    global _skipped
    if not _PROC.is_dir():
        _skipped = "leak check skipped: no /proc on this platform"
        return
    _shutdown_ray()
    _leaks.update(wait_for_exit())
    if not _leaks:
        return
    for pid in _leaks:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # exited meanwhile, or not ours to kill
            pass
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        sys.stderr.write(_report())
    else:  # counted in the final line too ("3 passed, 1 leaked"), which is what most people read
        leaked = [SimpleNamespace(pid=pid, cmdline=cmd) for pid, cmd in sorted(_leaks.items())]
        reporter.stats.setdefault("leaked", []).extend(leaked)  # other plugins read entries' __dict__


def _report() -> str:
    lines = [f"{len(_leaks)} process(es) started by this test session outlived it (now SIGKILLed):"]
    lines += [f"  pid {pid}: {cmd or '?'}" for pid, cmd in sorted(_leaks.items())]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the leaks (or why the check did not run) among the summary, where a failure is seen."""
    if _skipped:
        terminalreporter.write_line(_skipped, yellow=True)
    if _leaks:
        terminalreporter.write_sep("=", "LEAKED PROCESSES", red=True, bold=True)
        terminalreporter.write(_report(), red=True)
