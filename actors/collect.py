"""Datasets of scripted play, collected through the env runner (the one rollout path).

`play` runs `Runner.play` in this process with a local `ScriptedBackend`, so a dataset's episodes
are built exactly as a training run's: the run's env config (`env.history`, `syntax_penalty`,
`max_steps`, kwargs), the same Turn fields, the same crash handling. `collect` splits the episodes
into chunks played by Ray tasks and writes them in chunk order to a dataset folder
(`replay.datasets.DatasetWriter`), so the same config, seed and worker count give the same dataset.
Episode i plays env seed `data.seed + i`; a chunk's policy draws from its own generator
`(data.seed, chunk)`.

`data.policy: model` collects with the base model instead (DESIGN 1.4: any model served by the
sampler): Sampler actors serve `model.path` with the run's `sampler` settings, and one runner in this
process plays every episode through them, so the turns carry the sampler's prompt and generated token
ids and behaviour log-probs, as online turns do (version 0, the base model). Sampling draws are the
engine's, so such a dataset is not reproduced bit for bit by the same seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import tempfile

import numpy as np
import ray

from actors.env_runner import Runner
from actors.scripted_backend import ScriptedBackend
from replay.datasets import DatasetWriter, info
from replay.store import encode_png
from replay.turn import Turn, turns_to_table
from vlmq.config import RunConfig, validate

MAX_EPISODES_PER_SEGMENT = 500


class _Sink(list):
    """What the runner sends its finished episodes to, kept in memory."""

    def add(self, turns: list[Turn]) -> None:
        self.extend(turns)


def collection_config(cfg: RunConfig) -> RunConfig:
    """The run's config with the scripted backend playing `data.policy`: one runner, no epsilon."""
    return dataclasses.replace(
        cfg,
        sampler=dataclasses.replace(cfg.sampler, backend="scripted", policy=cfg.data.policy),
        runner=dataclasses.replace(cfg.runner, num_runners=1, epsilon=0.0),
    )


def play(
    cfg: RunConfig, seeds: range, rng_seed: int | list[int] = 0, tag: str = "data"
) -> tuple[list[Turn], dict]:
    """The turns of one `data.policy` episode per env seed (sorted by seed), and the runner's stats."""
    cfg = collection_config(cfg)
    sink = _Sink()
    runner = Runner(cfg, [ScriptedBackend(cfg.data.policy, seed=rng_seed)], sink, tag=tag)
    stats = runner.play(seeds)
    for slot in runner.slots:
        slot.env.close()
    return sorted(sink, key=lambda t: (t.seed, t.turn_index)), stats


@ray.remote(num_cpus=1)
def _chunk(cfg: RunConfig, first: int, count: int, tag: str) -> tuple:
    """Episodes [first, first + count) as a table plus its images as PNG (encoded here, in parallel)."""
    seed = cfg.data.seed
    turns, stats = play(cfg, range(seed + first, seed + first + count), [seed, first], f"{tag}-{first:07d}")
    table, images = turns_to_table(turns)
    return table, {h: encode_png(img) for h, img in images.items()}, stats


def _play_scripted(cfg: RunConfig, writer: DatasetWriter, tag: str, workers: int) -> dict:
    """The episodes in chunks played by up to `workers` Ray tasks at a time, written in chunk order (the
    same seed gives the same dataset); the episodes lost to env crashes."""
    d = cfg.data
    lost = {"crashes": 0, "dropped_turns": 0}
    n_chunks = min(d.episodes, max(workers, math.ceil(d.episodes / MAX_EPISODES_PER_SEGMENT)))
    bounds = np.linspace(0, d.episodes, n_chunks + 1).astype(int)
    pending: list = []

    def write(ref) -> None:
        table, pngs, stats = ray.get(ref)
        writer.write(table, pngs)
        for k in lost:
            lost[k] += stats[k]

    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pending.append(_chunk.remote(cfg, int(lo), int(hi - lo), tag))
        if len(pending) >= workers:
            write(pending.pop(0))
    for ref in pending:
        write(ref)
    return lost


def _play_model(cfg: RunConfig, writer: DatasetWriter, tag: str, workers: int) -> dict:
    """`data.episodes` episodes of the base model, served by `sampler.num_samplers` Sampler actors (not
    `workers`: one engine serves many envs) and played by one runner in this process, written segment
    by segment as they finish; the episodes lost to env crashes."""
    from actors.placement import start_samplers

    cfg = dataclasses.replace(cfg, runner=dataclasses.replace(cfg.runner, num_runners=1, epsilon=0.0))
    state = tempfile.mkdtemp(prefix="vlmq-collect-")  # the samplers' restart state: nothing to keep
    samplers = start_samplers(cfg, state_root=state)
    try:
        sink = _Sink()
        runner = Runner(cfg, samplers, sink, tag=f"{tag}-model")
        stats: dict = {}
        for lo in range(0, cfg.data.episodes, MAX_EPISODES_PER_SEGMENT):
            hi = min(cfg.data.episodes, lo + MAX_EPISODES_PER_SEGMENT)
            stats = runner.play(range(cfg.data.seed + lo, cfg.data.seed + hi))
            writer.write_turns(sorted(sink, key=lambda t: (t.seed, t.turn_index)))
            sink.clear()
        for slot in runner.slots:
            slot.env.close()
        return {k: stats[k] for k in ("crashes", "dropped_turns")}
    finally:
        for s in samplers:
            ray.kill(s)
        shutil.rmtree(state, ignore_errors=True)


def collect(cfg: RunConfig, out: str, workers: int = 2) -> dict:
    """`data.episodes` episodes of `data.policy` on `cfg.env` into a new dataset folder `out`, with up
    to `workers` Ray tasks at a time. Starts a local Ray unless one is running or RAY_ADDRESS names a
    cluster. Returns `replay.datasets.info(out)`."""
    d = cfg.data
    validate(cfg)  # a bad config fails here, not in a worker
    if workers < 1:
        raise ValueError(f"collect: workers must be >= 1, got {workers}")
    writer = DatasetWriter(out)
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        key = f"{cfg.env.id}|{d.policy}|{cfg.env.obs_mode}|{d.seed}"
        tag = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
        record = _play_model if d.policy == "model" else _play_scripted
        lost = record(cfg, writer, tag, workers)
    finally:
        if started:
            ray.shutdown()
    e = cfg.env
    meta = {
        "env_id": e.id,
        "policy": d.policy,
        "policy_version": -1,
        "obs_mode": e.obs_mode,
        "history": e.history,
        "syntax_penalty": e.syntax_penalty,
        "max_steps": e.max_steps,
        "demo": e.demo,
        "env_kwargs": e.kwargs,
        "seed": d.seed,
        "episodes": d.episodes,
        **lost,  # episodes whose env crashed are dropped, not retried
    }
    if d.policy == "model":
        s = cfg.sampler
        meta.update(policy_version=0, model=cfg.model.path, backend=s.backend, temperature=s.temperature)
    writer.close(meta)
    return info(out)
