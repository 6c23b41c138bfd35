"""The main job end to end, through the real CLI: `ray start --head --block`, `deploy/submit.sh`
(`ray job submit`), a short config; then resume, and placement on a simulated 2-node cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    """A Ray head of its own (own temp dir and ports), stopped by process group afterwards: never `ray stop`."""
    from vlmq.local_cluster import start_head

    node = start_head(num_cpus=8)
    yield {"env": node.env, "address": node.address, "metrics": node.metrics_port}
    node.stop()


def _submit(head, job_id: str, out_dir: Path, model_dir: Path, *args: str, wait: bool = False):
    env = dict(head["env"], VLMQ_JOB_ID=job_id, VLMQ_PYTHON=sys.executable)
    if not wait:
        env["VLMQ_SUBMIT_FLAGS"] = "--no-wait"
    cmd = [
        "bash",
        "deploy/submit.sh",
        "configs/smoke.yaml",
        f"out_dir={out_dir}",
        f"model.path={model_dir}",
        *args,
    ]
    for _ in range(60):  # a new head's job agent registers a little after its dashboard answers
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in out.stderr:
            return out
        time.sleep(2)
    return out


def _client(head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head["address"])


def _status(head, job_id: str) -> str:
    return str(_client(head).get_job_status(job_id).value)


def _wait_status(head, job_id: str, timeout: float = 900, poll=None) -> str:
    """Wait for a terminal status, calling `poll()` in between (e.g. to watch the metrics port)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _status(head, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if poll is not None:
            poll()
        time.sleep(2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")


def _online_versions(replay_root: Path) -> dict[int, int]:
    from replay.shard import Shard
    from vlmq.config import ReplayConfig

    shard = Shard(str(replay_root), ReplayConfig(), 0, 1)
    try:
        return shard.stats()["policy_versions"]["online"]
    finally:
        shard.close()


def test_job_submit_end_to_end(head, tiny_vlm_dir, tmp_path):
    job = "vlmq-e2e"
    out = _submit(head, job, tmp_path, tiny_vlm_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = {"metrics": False}

    def watch_metrics():
        if not seen["metrics"]:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{head['metrics']}/metrics", timeout=5).read()
                seen["metrics"] = b"ray_vlmq_updates_total" in page and b"ray_vlmq_env_steps" in page
            except OSError:
                pass

    status = _wait_status(head, job, poll=watch_metrics)
    logs = _client(head).get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    metrics_seen = seen["metrics"]
    if not metrics_seen:  # the export lags by ~10 s; the job may end first
        time.sleep(15)
        page = urllib.request.urlopen(f"http://127.0.0.1:{head['metrics']}/metrics", timeout=5).read()
        metrics_seen = b"ray_vlmq_updates_total" in page
    assert metrics_seen, "custom vlmq metrics never appeared on the metrics export port"

    run = tmp_path / "smoke"
    results = json.loads((run / "results.json").read_text())
    assert results["lora_versions"] >= 2
    assert results["updates"] == 10
    phases = {"start", "eval_before", "offline", "eval_offline", "online", "eval_final"}
    assert set(results["phase_s"]) == phases and all(t > 0 for t in results["phase_s"].values())
    assert 0 < results["sampler_startup_s"] < results["wall_s"]
    assert all(0 <= results[f"syntax_{k}"] <= 1 for k in ("before", "offline", "final"))
    assert (run / "checkpoints" / "latest").exists()
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "learner").is_dir() and (ckpt / "driver.json").exists()
    versions = _online_versions(run / "replay")
    served = {v for v in versions if int(v) > 0}
    assert served, f"no online turns with a policy version > 0: {versions}"
    assert len(served) >= 2, f"online turns came from fewer than 2 LoRA versions: {versions}"
    assert logs.count("[eval") == 3 and "refused" not in logs
    for png in ("collection.png", "learning.png"):
        assert (run / png).stat().st_size > 0
    _every_metric_in_tensorboard(run / "tensorboard", updates=10)


def _every_metric_in_tensorboard(folder, updates: int) -> None:
    """Every metric of vlmq/metrics.py (the table docs/metrics.md shows) reached TensorBoard, the
    runners' and samplers' included; a counter is its running total from 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vlmq.metrics import SPECS

    events = EventAccumulator(str(folder))
    events.Reload()
    shown = {tag.split("/")[1] for tag in events.Tags()["scalars"] if tag.startswith("metrics/")}
    assert shown == set(SPECS)
    counts = [e.value for e in events.Scalars("metrics/updates")]
    assert counts[0] == 0 and counts[-1] == updates


def test_resume_continues_from_checkpoint(head, tiny_vlm_dir, tmp_path):
    job = "vlmq-resume-1"
    longer = ["learner.online_steps=400", "learner.checkpoint_every=5", "eval.episodes=4"]
    assert _submit(head, job, tmp_path, tiny_vlm_dir, *longer).returncode == 0
    ckpts = tmp_path / "smoke" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline:  # stop after a checkpoint taken in the online phase
        latest = (ckpts / "latest").read_text().strip() if (ckpts / "latest").exists() else ""
        if latest and int(latest.split("_")[1]) >= 10:  # 6 online updates: >= 60 turns, whole episodes
            break
        assert _status(head, job) not in ("FAILED", "STOPPED"), _client(head).get_job_logs(job)[-3000:]
        time.sleep(1)
    else:
        pytest.fail("no online checkpoint within 600 s")
    _client(head).stop_job(job)
    assert _wait_status(head, job) == "STOPPED"
    time.sleep(3)
    step = int((ckpts / "latest").read_text().strip().split("_")[1])
    before = _online_versions(tmp_path / "smoke" / "replay")
    assert sum(before.values()) > 0

    job2 = "vlmq-resume-2"
    short = ["learner.online_steps=16", "learner.checkpoint_every=5", "eval.episodes=4", "--resume"]
    out = _submit(head, job2, tmp_path, tiny_vlm_dir, *short, wait=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    logs = _client(head).get_job_logs(job2)
    assert f"resumed from step_{step:07d}: update {step}" in logs
    assert "[eval before]" not in logs  # the earlier job did it; a resume continues, not restarts
    results = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert results["updates"] == 4 + 16
    after = _online_versions(tmp_path / "smoke" / "replay")
    for v, n in before.items():  # the turns flushed before the stop are all still there
        assert after.get(v, 0) >= n
    # counted from what the replay stored, both job runs (none evicted), not from the checkpoint
    assert results["env_steps"] == sum(after.values()) > sum(before.values())


def test_two_node_cluster_places_runners_on_both(tiny_vlm_dir, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from vlmq.config import load_config
    from vlmq.driver import train

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        cfg = load_config(
            REPO / "configs" / "smoke.yaml",
            [f"out_dir={tmp_path}", f"model.path={tiny_vlm_dir}", "runner.num_runners=2",
             "runner.envs_per_runner=2", "sampler.backend=scripted", "learner.online_steps=2",
             "learner.checkpoint_every=100", "eval.episodes=4"],
        )  # fmt: skip
        results = train(cfg)
        assert results["runner_nodes"] == 2
        assert results["env_steps"] > 0
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_that_share_no_files(tiny_vlm_dir, tmp_path):
    """A worker node in its own mount namespace: the run directory and the model folder are empty
    there. Runners, the sampler and the learner are pinned to it, the driver runs on the head; the
    replay, the dataset and the checkpoints are on storage both see. A replay root on the private
    folder is refused at start. The worker's actors load the model the driver shipped, its sampler
    verifies the pushed LoRA versions, the turns reach the replay, the learner writes its part of
    each checkpoint from the worker and the driver its own, and the job resumes from them."""
    from learner.model_files import CACHE
    from vlmq.local_cluster import start_head, start_worker

    runs, shared = tmp_path / "runs", tmp_path / "shared"
    runs.mkdir()
    dataset = shared / "dataset"
    collect = [
        sys.executable,
        "-m",
        "vlmq",
        "data",
        "collect",
        "--config",
        "configs/smoke.yaml",
        "--out",
        str(dataset),
    ]
    subprocess.run(collect, cwd=REPO, check=True, capture_output=True, timeout=300)
    shutil.rmtree(CACHE, ignore_errors=True)
    head = start_head(num_cpus=6, multi_node=True, resources={"head_node": 4})
    worker = None
    try:
        worker = start_worker(head, num_cpus=4, resources={"worker_node": 4}, private=(runs, tiny_vlm_dir))
        cluster = {"env": head.env, "address": head.address}
        pinned = [
            "runner.resources={worker_node: 1}", "sampler.resources={worker_node: 1}",
            "learner.resources={worker_node: 1}", f"replay.root={shared / 'replay'}",
            f"data.path=file://{dataset}", f"checkpoint_root=file://{shared / 'checkpoints'}",  # fsspec URLs
        ]  # fmt: skip
        # a replay root the worker cannot see: refused at start, naming the node, before any collection
        private_root = [p for p in pinned if not p.startswith("replay.root=")] + [
            f"replay.root={runs / 'replay'}"
        ]
        out = _submit(cluster, "vlmq-2node-0", runs, tiny_vlm_dir, *private_root, wait=True)
        logs = _client(cluster).get_job_logs("vlmq-2node-0")
        assert out.returncode != 0 and f"{runs / 'replay'} is not reachable from node" in logs, logs[-2000:]
        assert "[eval before]" not in logs
        out = _submit(cluster, "vlmq-2node-1", runs, tiny_vlm_dir, *pinned, wait=True)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        results = json.loads((runs / "smoke" / "results.json").read_text())
        pushes = json.loads((runs / "smoke" / "history.json").read_text())["pushes"]
        assert results["lora_versions"] >= 2 and len(pushes) >= 2  # each verified by the worker's sampler
        assert [p.name for p in CACHE.iterdir() if not p.name.startswith(".")]  # it loaded the shipped model
        assert results["env_steps"] == sum(_online_versions(shared / "replay").values()) > 0
        assert (shared / "checkpoints" / "latest").exists() and not (runs / "smoke" / "checkpoints").exists()
        latest = shared / "checkpoints" / (shared / "checkpoints" / "latest").read_text()
        assert (latest / "learner" / "learner.json").exists() and (latest / "driver.json").exists()
        more = ["learner.online_steps=10", "--resume"]
        out = _submit(cluster, "vlmq-2node-2", runs, tiny_vlm_dir, *pinned, *more, wait=True)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "resumed from step_" in _client(cluster).get_job_logs("vlmq-2node-2")
        assert json.loads((runs / "smoke" / "results.json").read_text())["updates"] == 4 + 10
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
