"""Faults a job survives, killed as an operator would see them -> benchmarks/results/chaos.json.

Each fault is one job, submitted through deploy/submit.sh to a local Ray head (`ray start --head
--block`, vlmq/local_cluster.py) with 2 runners, 2 samplers (hf backend, LoRA pushes every 5 updates)
and 2 replay shards. Once the online phase has checkpointed (so a learner has something to roll
back to), one process is killed with SIGKILL at the pid Ray's state API reports for it: a Runner,
a Sampler, a replay Shard, the Learner worker. Then, on a head plus one worker node (a second
`ray start` raylet), the worker node is killed: its raylet, by pid.

Per fault:
- job_status: the job's final status (the goal: SUCCEEDED).
- recovered_s: from the kill until every kind of actor is back at its count before the kill, none on
  the killed process or node (the state API, polled every 0.5 s).
- turns_stored: distinct online turns in the replay's folders after the job; duplicates: rows
  stored twice (the same episode id and turn index).
- acknowledged_turns_lost: turns the runners had had acknowledged by the replay (results.json
  `turns_acknowledged`, a dead runner's by its last report) that are not stored, as counts:
  max(0, acknowledged - stored). tests/test_replay.py checks the same by key.
- lived_there (node only): the actors the killed node held.

Run: .venv/bin/python benchmarks/chaos.py [--faults runner sampler shard learner node]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlmq.local_cluster import start_head, start_worker  # noqa: E402

CLASSES = {"runner": "Runner", "sampler": "Sampler", "shard": "Shard", "learner": "Learner"}
OVERRIDES = [
    "sampler.num_samplers=2", "runner.num_runners=2", "runner.envs_per_runner=2", "replay.num_shards=2",
    "learner.online_steps=30", "learner.checkpoint_every=5", "learner.publish_every=5",
    "learner.max_updates_per_turn=0.2", "eval.episodes=4",
]  # fmt: skip


def alive(address: str) -> list[dict]:
    from ray.util.state import list_actors

    rows = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    return [{"cls": a.class_name, "pid": a.pid, "node": a.node_id, "id": a.actor_id} for a in rows]


def counts(actors: list[dict]) -> dict[str, int]:
    return {c: sum(a["cls"] == c for a in actors) for c in CLASSES.values()}


def stored(replay: Path) -> tuple[int, int]:
    """(distinct online turns, rows stored twice) over the shards' folders."""
    from replay.store import read_folder

    keys = []
    for shard in sorted(replay.glob("shard-*")):
        table, _ = read_folder(str(shard))
        keys += zip(table.column("episode_id").to_pylist(), table.column("turn_index").to_pylist())
    return len(set(keys)), len(keys) - len(set(keys))


def wait_online_checkpoint(run: Path, job: str, client, after: int, timeout: float = 900) -> None:
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.exists() and int(latest.read_text().split("_")[1]) >= after:
            return
        if str(client.get_job_status(job).value) in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise RuntimeError(f"{job} ended before the online phase: {client.get_job_logs(job)[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{job}: no checkpoint >= step {after} in {timeout} s")


def one_fault(fault: str, head, worker, model: Path, root: Path) -> dict:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.address)
    job, out = f"chaos-{fault}-{int(time.time())}", root / fault
    env = dict(head.env, VLMQ_JOB_ID=job, VLMQ_PYTHON=sys.executable, VLMQ_SUBMIT_FLAGS="--no-wait")
    cmd = [
        "bash",
        "deploy/submit.sh",
        "configs/smoke.yaml",
        f"out_dir={out}",
        f"model.path={model}",
        *OVERRIDES,
    ]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    run = out / "smoke"
    wait_online_checkpoint(run, job, client, after=4 + 5)  # smoke: 4 offline updates
    before = alive(head.address)
    if fault == "node":
        head_id = next(a["node"] for a in before if a["cls"] == "JobSupervisor")  # the driver's node
        lived = sorted(a["cls"] for a in before if a["node"] != head_id and a["cls"] in CLASSES.values())
        if not lived:
            raise RuntimeError(f"no vlmq actor was placed on the worker node: {before}")
        dead_node = next(a["node"] for a in before if a["node"] != head_id and a["cls"] in CLASSES.values())
        os.kill(worker.raylet_pid(), signal.SIGKILL)
        gone = lambda a: a["node"] == dead_node  # noqa: E731
    else:
        victim = next(a for a in before if a["cls"] == CLASSES[fault])
        os.kill(victim["pid"], signal.SIGKILL)
        gone = lambda a: a["pid"] == victim["pid"]  # noqa: E731
    t_kill, want, recovered_s = time.time(), counts(before), None
    while time.time() - t_kill < 600:
        now = alive(head.address)
        if counts(now) == want and not any(gone(a) for a in now if a["cls"] in CLASSES.values()):
            recovered_s = round(time.time() - t_kill, 1)
            break
        time.sleep(0.5)
    deadline = time.time() + 1200
    while (status := str(client.get_job_status(job).value)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.time() > deadline:
            client.stop_job(job)
        time.sleep(2)
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    turns, dups = stored(run / "replay")
    acked = results.get("turns_acknowledged")
    row = {
        "job_status": status,
        "recovered_s": recovered_s,
        "acknowledged_turns_lost": None if acked is None else max(0, acked - turns),
        "duplicates": dups,
        "turns_stored": turns,
        "turns_acknowledged": acked,
        "env_steps": results.get("env_steps"),
        "runner_restarts": results.get("runner_restarts"),
        "learner_restarts": results.get("learner_restarts"),
        "updates": results.get("updates"),
        "wall_s": results.get("wall_s"),
    }
    if fault == "node":
        row["lived_there"] = lived
    if status != "SUCCEEDED":
        row["log_tail"] = client.get_job_logs(job)[-3000:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faults", nargs="+", default=["runner", "sampler", "shard", "learner", "node"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chaos.json"))
    args = ap.parse_args()
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {"faults": {}}
    with tempfile.TemporaryDirectory(prefix="vlmq-chaos-") as tmp:
        root = Path(tmp)
        from vlmq.tiny_model import build_tiny_model

        model = build_tiny_model(root / "tiny-vlm", arch="idefics3", seed=0)
        for fault in args.faults:
            head = start_head(num_cpus=8, multi_node=fault == "node")
            worker = None
            try:
                if fault == "node":
                    worker = start_worker(head, num_cpus=4)
                t0 = time.time()
                result["faults"][fault] = one_fault(fault, head, worker, model, root)
                result["faults"][fault]["benchmark_s"] = round(time.time() - t0, 1)
            finally:
                for node in (worker, head):
                    if node is not None:
                        node.stop()
            result["setup"] = {"cpus": os.cpu_count(), "config": "configs/smoke.yaml", "overrides": OVERRIDES}
            path.write_text(
                json.dumps(result, indent=1) + "\n"
            )  # after every fault: a partial run keeps its rows
            print(
                fault,
                json.dumps({k: v for k, v in result["faults"][fault].items() if k != "log_tail"}),
                flush=True,
            )


if __name__ == "__main__":
    main()
