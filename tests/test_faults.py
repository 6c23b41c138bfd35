"""Faults a job survives, with real SIGKILLs: a runner replaced, a learner worker rolled back to the
latest checkpoint, and the counts taken from what the replay stored."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from vlmq.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

KILL_RUNNER_AT, KILL_LEARNER_AT = 8, 16  # updates (the online phase starts after 4)


@pytest.fixture(scope="module")
def faulty_run(ray_local, tiny_vlm_dir, tmp_path_factory):
    """The smoke config with scripted samplers, 2 runners and 20 online updates; runner 0 is killed
    after update 8 (once the replay holds some of its turns) and the learner worker after update 16
    (checkpoints every 5 updates)."""
    from vlmq import driver as drv

    seen: dict = {}
    update = drv.Driver.update

    def update_and_kill(self, offline_fraction):
        m = update(self, offline_fraction)
        stored = self.replay.stored()["turns"]
        if self.state.updates >= KILL_RUNNER_AT and stored and "runner_pid" not in seen:
            seen["online_before"] = stored
            seen["runner_pid"] = self.last_stats[0]["pid"]
            os.kill(seen["runner_pid"], signal.SIGKILL)
        if self.state.updates == KILL_LEARNER_AT and "learner_pid" not in seen:
            (seen["learner_pid"],) = self.learner.pids()
            os.kill(seen["learner_pid"], signal.SIGKILL)
        seen["runner_pids"] = [s["pid"] for s in self.last_stats.values()]
        return m

    out = tmp_path_factory.mktemp("faults")
    cfg = load_config(
        REPO / "configs" / "smoke.yaml",
        [f"out_dir={out}", f"model.path={tiny_vlm_dir}", "sampler.backend=scripted", "runner.num_runners=2",
         "runner.envs_per_runner=2", "runner.send_every=4", "learner.online_steps=20", "learner.checkpoint_every=5",
         "learner.max_updates_per_turn=0.2", "eval.episodes=2", "data.episodes=16"],
    )  # fmt: skip
    drv.Driver.update = update_and_kill
    try:
        results = drv.train(cfg)
    finally:
        drv.Driver.update = update
    run = out / "smoke"
    return {"results": results, "seen": seen, "run": run, "cfg": cfg}


def _stored(run: Path, episodes: bool = False) -> int:
    """Online turns (or episodes) on the replay's disk, asserting that no turn is there twice."""
    from replay.store import read_folder

    table, bad = read_folder(str(run / "replay" / "shard-000"))
    keys = list(zip(table.column("episode_id").to_pylist(), table.column("turn_index").to_pylist()))
    assert not bad and len(keys) == len(set(keys))
    ends = [
        a or b for a, b in zip(table.column("terminated").to_pylist(), table.column("truncated").to_pylist())
    ]
    return sum(ends) if episodes else len(keys)


def test_a_killed_runner_is_replaced_and_the_replay_keeps_growing(faulty_run):
    results, seen = faulty_run["results"], faulty_run["seen"]
    assert results["runner_restarts"] == 1
    assert seen["runner_pid"] not in seen["runner_pids"] and len(set(seen["runner_pids"])) == 2
    assert _stored(faulty_run["run"]) > seen["online_before"] > 0
    faults = json.loads((faulty_run["run"] / "history.json").read_text())["faults"]
    assert [f["fault"] for f in faults] == ["runner", "learner"] and faults[0]["runner"] == 0


def test_a_killed_learner_worker_rolls_back_to_the_checkpoint_and_the_job_finishes(faulty_run):
    results = faulty_run["results"]
    faults = json.loads((faulty_run["run"] / "history.json").read_text())["faults"]
    assert results["learner_restarts"] == 1
    assert (faults[1]["from_update"], faults[1]["x"]) == (KILL_LEARNER_AT, 15)  # back to step_0000015
    assert results["updates"] == 4 + 20 and results["success_final"] >= 0.0
    updates = [u["x"] for u in json.loads((faulty_run["run"] / "history.json").read_text())["updates"]]
    assert updates.count(16) == 2 and updates.count(17) == 1  # update 16 was done twice, 17 once


def test_counts_are_what_the_replay_stored(faulty_run):
    results = faulty_run["results"]
    assert results["env_steps"] == _stored(faulty_run["run"])
    assert results["episodes"] == _stored(faulty_run["run"], episodes=True) > 0
    # every acknowledged turn is stored, the dead runner's included (its last reported count)
    assert 0 < results["turns_acknowledged"] <= results["env_steps"]
