"""A Ray cluster on this machine, started the way an operator starts one: `ray start --block`
processes with their own temp dir and ports, stopped by process group (never `ray stop`, which would
kill every Ray on the machine). The tests and benchmarks/chaos.py use it; a worker node is a real
second raylet, so killing it is a lost node.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    proc: subprocess.Popen
    env: dict[str, str]  # RAY_ADDRESS set to the head's dashboard: what `ray job submit` needs
    gcs: str  # host:port, what `ray start --address` and `ray.init(address=...)` take
    metrics_port: int  # the node's Prometheus export

    @property
    def address(self) -> str:
        return self.env["RAY_ADDRESS"]

    def raylet_pid(self) -> int:
        """The node's raylet process: killing it is losing the node."""
        for pid in os.listdir("/proc"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if os.getpgid(int(pid)) == self.proc.pid and cmd[0].endswith(b"/raylet"):
                    return int(pid)
            except (OSError, ValueError):
                continue
        raise ProcessLookupError(f"no raylet in process group {self.proc.pid}")

    def stop(self) -> None:
        """SIGTERM to the node's process group, SIGKILL if it has not exited after 30 s."""
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


def _start(args: list[str], env: dict[str, str], private: tuple = ()) -> tuple[subprocess.Popen, int]:
    tmp = tempfile.mkdtemp(prefix="vq", dir="/tmp")  # short: Ray's unix sockets live under it
    ports = {k: _free_port() for k in ("metrics", "agent", "agent_grpc", "env_agent")}
    cmd = [
        str(BIN / "ray"), "start", "--block", f"--temp-dir={tmp}", "--disable-usage-stats",
        # every default port chosen afresh: another Ray on the machine must not break this one
        f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['env_agent']}",
        *args,
    ]  # fmt: skip
    if (
        private
    ):  # a mount namespace of its own, a private empty tmpfs over each folder: those files are not there
        mounts = " && ".join(f"mount -t tmpfs vlmq-private {shlex.quote(str(p))}" for p in private)
        cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{mounts} && exec {shlex.join(cmd)}",
        ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    return proc, ports["metrics"]


def start_head(
    num_cpus: int = 8, multi_node: bool = False, resources: dict | None = None, timeout: float = 120
) -> Node:
    """A head with a dashboard (jobs, the state API) on free ports; returns once it answers.
    `multi_node`: worker nodes may join (Ray then uses the machine's network address, not loopback)."""
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1" if multi_node else "0",
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}:{os.environ['PATH']}",
    )
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client = _free_port(), _free_port(), _free_port()
    proc, metrics = _start(
        ["--head", f"--port={gcs}", f"--num-cpus={num_cpus}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--resources={json.dumps(resources or {})}"],
        env,
    )  # fmt: skip
    node = Node(proc, dict(env, RAY_ADDRESS=f"http://127.0.0.1:{dash}"), f"127.0.0.1:{gcs}", metrics)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{node.address}/api/version", timeout=2)
            return node
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                node.stop()
                raise RuntimeError("the Ray head did not come up") from None
            time.sleep(1)


def start_worker(
    head: Node, num_cpus: int = 4, resources: dict | None = None, private: tuple = (), timeout: float = 120
) -> Node:
    """A worker node joined to `head` (started with `multi_node`); returns once the cluster counts it
    alive. `private` folders are hidden from it (needs root: `unshare --mount`), so it shares no
    files there with the head, as a node of a real cluster would not."""
    from ray.util.state import list_nodes

    def alive() -> int:
        return len(list_nodes(address=head.address, filters=[("state", "=", "ALIVE")]))

    before = alive()
    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
    args = [f"--address={head.gcs}", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}"]
    proc, metrics = _start(args, env, tuple(private))
    node = Node(proc, head.env, head.gcs, metrics)
    deadline = time.time() + timeout
    while alive() <= before:
        if time.time() > deadline or proc.poll() is not None:
            node.stop()
            raise RuntimeError("the Ray worker node did not join")
        time.sleep(1)
    return node
