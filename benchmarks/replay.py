"""Replay throughput and storage cost -> benchmarks/results/replay.json.

- add_turns_per_s: what the shards absorb. Image-less turns (200 prompt ids, 24 generated ids and
  log-probs, a ~600-char prompt) in batches of 1,000, already converted to Arrow (EnvRunners do
  that in parallel), sent by 2 concurrent writer actors to the shards of their episodes; default
  flush bound (flush_turns=256), so every batch is also written to disk. The writers build their
  batches first; the clock runs from the driver's call that starts both writers' add loops until
  both have returned (each add waits for the shard's reply, i.e. for its flush).
- client_add_turns_per_s: the same through ReplayClient.add, i.e. including validation and
  conversion in the 2 writer processes (the Turn objects are built before the clock starts).
- small_add_turns_per_s: as add_turns_per_s, in batches of `runner.send_every` (16) turns, what an
  EnvRunner sends: below the flush bound, so each add first writes its write-ahead file (add
  returns only once its turns are durable).
- *_per_shard_cpu_s: the same turns divided by the CPU seconds the shard processes used, i.e. the
  rate of a shard with a core to itself; on a shared, oversubscribed machine (see
  setup.load_average_1min) wall-clock rates understate that.
- sample_turns_per_s: the driver draws batches of 256 through ReplayClient.sample (half offline,
  half online), turns fully materialised.
- bytes_per_turn: a numberline dataset (obs_mode both, random policy) on disk; `dedup` is segments
  plus the content-addressed image store, `no_dedup` is segments plus one PNG per image reference
  (prompt and next-prompt image of every turn), i.e. what storing images with turns would cost.

Run: .venv/bin/python benchmarks/replay.py [--turns 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it measures: keep its folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from actors.collect import collect  # noqa: E402
from replay.client import start_replay  # noqa: E402
from replay.datasets import DatasetWriter, info  # noqa: E402
from replay.shard import shard_of  # noqa: E402
from replay.store import open_root, read_folder  # noqa: E402
from replay.turn import Turn, to_ipc, turns_to_table  # noqa: E402
from vlmq.config import DataConfig, ReplayConfig, RunConfig, RunnerConfig  # noqa: E402

TEXT = "You are playing NumberLine. Move the current number to the target. " * 9


def batch(prefix: str, n: int) -> list[Turn]:
    """n image-less turns in episodes of 8."""
    out = []
    for i in range(n):
        t, last = i % 8, i % 8 == 7
        out.append(
            Turn(
                episode_id=f"{prefix}-{i // 8}",
                turn_index=t,
                env_id="numberline",
                seed=i // 8,
                messages=[{"role": "user", "content": [{"type": "text", "text": f"{TEXT} state {t}"}]}],
                prompt_ids=list(range(200)),
                gen_ids=list(range(24)),
                action_text='{"thoughts": "closer", "action": "+"}',
                action="+",
                reward=1.0 if last else 0.0,
                terminated=last,
                policy_version=1,
                logprobs=[-0.5] * 24,
                wall_time=time.time(),
                next_messages=None
                if last
                else [{"role": "user", "content": [{"type": "text", "text": "next"}]}],
            )
        )
    return out


@ray.remote(num_cpus=0)
class Writer:
    """Builds its batches in `prepare` (before the clock starts; with `preconverted` also what
    ReplayClient.add sends, Arrow IPC bytes and images per shard, as EnvRunners do it in parallel),
    then `run` only adds them."""

    def prepare(self, client, prefix: str, batches: int, size: int, preconverted: bool) -> None:
        self.client, self.preconverted = client, preconverted
        self.data = [batch(f"{prefix}-{b}", size) for b in range(batches)]
        if preconverted:
            self.data = [converted(turns, client.shards) for turns in self.data]

    def run(self) -> None:
        for item in self.data:
            if self.preconverted:
                ray.get([shard.add.remote(rows, images) for shard, rows, images in item])
            else:
                self.client.add(item)


def converted(turns: list[Turn], shards: list) -> list[tuple]:
    """(shard, rows, images) for each shard that gets some of these episodes."""
    groups: dict[int, list[Turn]] = {}
    for t in turns:
        groups.setdefault(shard_of(t.episode_id, len(shards)), []).append(t)
    out = []
    for i, group in groups.items():
        table, images = turns_to_table(group)
        out.append((shards[i], to_ipc(table), images))
    return out


def shard_cpu(client) -> float:
    """CPU seconds the shard processes have used (all their threads, Ray's included)."""
    return sum(st["cpu_s"] for st in client.stats()["shards"])


def throughput(shards: int, turns: int, root: str, offline_dir: str) -> dict:
    client = start_replay(ReplayConfig(num_shards=shards, online_capacity=200_000), f"{root}/s{shards}")
    client.load_offline(offline_dir)
    big, writers = 1000, 2
    client.add(batch("warm", big))
    per_writer = max(1, turns // (writers * big))  # batches of `big` turns each writer sends
    small = RunnerConfig().send_every  # what one EnvRunner sends at a time
    rates = {}
    for key, pre, size in (
        ("add_turns_per_s", True, big),
        ("client_add_turns_per_s", False, big),
        ("small_add_turns_per_s", True, small),
    ):
        ws = [Writer.remote() for _ in range(writers)]
        n = per_writer * big // size
        ray.get([w.prepare.remote(client, f"{key}{i}", n, size, pre) for i, w in enumerate(ws)])
        cpu, t0 = shard_cpu(client), time.perf_counter()
        ray.get([w.run.remote() for w in ws])
        rates[key] = round(writers * n * size / (time.perf_counter() - t0))
        for w in ws:
            ray.kill(w)
        if key == "add_turns_per_s":
            rates["add_turns_per_shard_cpu_s"] = round(writers * n * size / (shard_cpu(client) - cpu))
    client.sample(256, 0.5)
    n, cpu, t0 = 0, shard_cpu(client), time.perf_counter()
    while time.perf_counter() - t0 < 5.0:
        n += len(client.sample(256, 0.5))
    rates["sample_turns_per_s"] = round(n / (time.perf_counter() - t0))
    rates["sample_turns_per_shard_cpu_s"] = round(n / (shard_cpu(client) - cpu))
    for s in client.shards:
        ray.kill(s)
    return rates


def bytes_per_turn(root: str, episodes: int) -> dict:
    out = f"{root}/numberline"
    stats = collect(RunConfig(data=DataConfig(episodes=episodes)), out, workers=2)
    table, _ = read_folder(out)
    fs, path = open_root(out)
    size = {p.rsplit("/", 1)[-1][:-4]: fs.size(p) for p in fs.find(f"{path}/images")}
    refs = [
        h for col in ("image_hashes", "next_image_hashes") for hs in table.column(col).to_pylist() for h in hs
    ]
    n = stats["turns"]
    return {
        "dedup": round((stats["segment_bytes"] + stats["image_bytes"]) / n),
        "no_dedup": round((stats["segment_bytes"] + sum(size[h] for h in refs)) / n),
        "turns": n,
        "distinct_images": stats["images"],
        "image_references": len(refs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=100_000, help="turns added per shard count")
    ap.add_argument("--episodes", type=int, default=500, help="numberline episodes for bytes_per_turn")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "replay.json"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        offline = f"{root}/offline"
        writer_ = DatasetWriter(offline)
        writer_.write_turns(batch("offline", 4000))
        writer_.close()
        result = {
            "shards": {str(s): throughput(s, args.turns, root, offline) for s in (1, 2, 4)},
            "bytes_per_turn": bytes_per_turn(root, args.episodes),
        }
        result["offline_dataset_turns"] = info(offline)["turns"]
    result["setup"] = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "turns_added": args.turns,
        "writers": 2,
        "add_batch": 1000,
        "small_add_batch": RunnerConfig().send_every,
        "sample_batch": 256,
        "sample_offline_fraction": 0.5,
        "flush_turns": ReplayConfig().flush_turns,
        "storage": "local disk (file://)",
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before, after
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
