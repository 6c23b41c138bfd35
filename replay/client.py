"""The replay as one object: routes episodes to shards and samples across them.

A ReplayClient holds only actor handles, so it pickles: pass it to EnvRunners and learner workers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import ray

from replay.shard import ReplayShard, shard_of, split_offline
from replay.store import absolute_url
from replay.turn import Turn, from_ipc, image_refs, rows_to_turns, to_ipc, turns_to_table
from vlmq.config import ReplayConfig
from vlmq.nodes import check_reachable


class ReplayClient:
    def __init__(self, shards: list, seed: int | None = None):
        if not shards:
            raise ValueError("ReplayClient needs at least one shard")
        self.shards = list(shards)
        self._rng = np.random.default_rng(seed)  # draws every batch: a seed makes them repeatable

    def add(self, turns: list[Turn]) -> int:
        """Send each episode's turns to its shard (by episode id). All turns are validated before
        any is sent, so a bad turn adds nothing. Returns the number added (retries add nothing)."""
        table, images = turns_to_table(turns)
        where = np.array([shard_of(e, len(self.shards)) for e in table.column("episode_id").to_pylist()])
        refs = []
        for i in np.unique(where):
            part = table if len(self.shards) == 1 else table.filter(pa.array(where == i))
            part_images = {h: images[h] for h in set(image_refs(part)) if h in images}
            refs.append(self.shards[i].add.remote(to_ipc(part), part_images))
        return sum(ray.get(refs))

    def sample(self, n: int, offline_fraction: float, seed: int | None = None) -> list[Turn]:
        """n turns, images loaded: round(n * offline_fraction) uniform over all offline turns, the
        rest uniform over all online turns (a partition that is empty everywhere gives its share
        to the other). Shards are drawn in proportion to their sizes, so the union is uniform."""
        if n < 0 or not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(
                f"sample: need n >= 0 and 0 <= offline_fraction <= 1, got {n}, {offline_fraction}"
            )
        sizes = np.array(ray.get([s.sizes.remote() for s in self.shards]), dtype=np.int64).reshape(-1, 2)
        off, on = sizes[:, 0], sizes[:, 1]
        rng = self._rng if seed is None else np.random.default_rng(seed)
        n_off = split_offline(n, offline_fraction, int(off.sum()), int(on.sum()))
        per_off = rng.multinomial(n_off, off / off.sum()) if n_off else np.zeros(len(off), np.int64)
        per_on = rng.multinomial(n - n_off, on / on.sum()) if n - n_off else np.zeros(len(on), np.int64)
        seeds = rng.integers(0, 2**63, len(self.shards))
        refs = [
            s.take.remote(int(a), int(b), int(sd))
            for s, a, b, sd in zip(self.shards, per_off, per_on, seeds)
            if a or b
        ]
        return [
            t for rows, images in ray.get(refs) for t in rows_to_turns(from_ipc(rows), images.__getitem__)
        ]

    def load_offline(self, dataset_dir: str) -> int:
        """Every shard loads its episodes of the dataset; returns offline turns held in total."""
        url = absolute_url(dataset_dir)
        return sum(ray.get([s.load_offline.remote(url) for s in self.shards]))

    def stored(self) -> dict[str, int]:
        """Online turns and episodes ever stored, over all shards (acknowledged adds are durable)."""
        per = ray.get([s.stored.remote() for s in self.shards])
        return {"turns": sum(t for t, _ in per), "episodes": sum(e for _, e in per)}

    def flush(self) -> int:
        return sum(ray.get([s.flush.remote() for s in self.shards]))

    def stats(self) -> dict:
        """Totals plus each shard's stats. `sample_age_turns` is the online turns' mean age at their
        last draw, counted in turns added to their shard since."""
        per = ray.get([s.stats.remote() for s in self.shards])
        versions: dict[str, dict[int, int]] = {"offline": {}, "online": {}}
        for st in per:
            for part, counts in st["policy_versions"].items():
                for v, c in counts.items():
                    versions[part][v] = versions[part].get(v, 0) + c
        ages = [st["sample_age_turns"] for st in per if st["sample_age_turns"] == st["sample_age_turns"]]
        ages_s = [st["sample_age_s"] for st in per if st["sample_age_s"] == st["sample_age_s"]]
        total = {
            k: sum(st[k] for st in per)
            for k in ("offline", "online", "unflushed", "added", "duplicates", "evicted")
        }
        return {
            **total,
            "sample_age_turns": float(np.mean(ages)) if ages else float("nan"),
            "sample_age_s": float(np.mean(ages_s)) if ages_s else float("nan"),
            "policy_versions": versions,
            "shards": per,
        }


def start_replay(cfg: ReplayConfig, root: str | None = None) -> ReplayClient:
    """Start (or reconnect to) `cfg.num_shards` named shard actors storing under `root`.

    Actor names derive from the storage root, so two runs can never have two shards writing one
    folder, and a second call with the same root returns the running shards. Shards are restarted
    by Ray up to `cfg.max_restarts` times and reload from disk; calls in flight are retried
    (add is idempotent). Not detached unless `cfg.detached`: by default the replay dies with the
    job that started it, and its folder outlives it.
    """
    url = absolute_url(root or cfg.root)
    check_reachable(url, {"CPU": cfg.num_cpus, **cfg.resources}, "replay.root")
    tag = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
    shards = [
        ReplayShard.options(
            name=f"vlmq-replay-{tag}-{i}",
            get_if_exists=True,
            lifetime="detached" if cfg.detached else None,
            max_restarts=cfg.max_restarts,
            max_task_retries=-1,
            num_cpus=cfg.num_cpus,
            resources=cfg.resources,
        ).remote(url, cfg, i, cfg.num_shards)
        for i in range(cfg.num_shards)
    ]
    ray.get([s.sizes.remote() for s in shards])  # surfaces a failing constructor here, by name
    return ReplayClient(shards, cfg.seed)
