"""Greedy evaluation on held-out seeds: the driver's evaluations during a run, and `vlmq eval` after it
(and what both need: joining Ray).

`vlmq eval` serves a run's policy as the run did: a checkpoint's policy is the LoRA version its samplers
were serving (driver.json `version`; the adapter the run published under adapters/v<version>, 0 being
the base model), so the newest checkpoint on the run's own settings plays the seeds of its `[eval final]`
with the same policy.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import ray

from vlmq.config import RunConfig

log = logging.getLogger(__name__)


def init_ray() -> None:
    """Join the cluster RAY_ADDRESS names, else start a local Ray (unless one is running here)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # logical CPUs: actors mostly wait on each other, so oversubscribing a small machine is fine
        ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1))


def evaluate_policy(runners: list, episodes: int, seed: int) -> dict:
    """Seeds seed..seed+episodes-1 split over the runners, greedy unless eval.temperature > 0; rates
    weighted by episodes."""
    m = len(runners)
    shares = [episodes // m + (i < episodes % m) for i in range(m)]
    seeds = [seed + sum(shares[:i]) for i in range(m)]
    res = ray.get([r.evaluate.remote(k, s) for r, k, s in zip(runners, shares, seeds) if k])
    total = sum(r["episodes"] for r in res)
    out = {
        k: sum(r[k] * r["episodes"] for r in res) / total
        for k in ("success_rate", "mean_return", "syntax_accuracy", "mean_length")
    }
    return {**out, "episodes": total}


def checkpoint_adapter(cfg: RunConfig, step: int | None = None) -> Path | None:
    """The adapter a run's samplers served at checkpoint `step` (None: the newest); None: the base model."""
    from vlmq.checkpoints import Checkpoints, step_name

    ckpts = Checkpoints(cfg.checkpoint_url)
    name = ckpts.latest() if step is None else step_name(step)
    if name is None or ckpts.read_text(name, "driver.json") is None:
        where = ckpts.folder(name) if name else f"in {ckpts.url}"
        raise FileNotFoundError(f"no checkpoint {where}; checkpoints there: {ckpts.names() or 'none'}")
    version = ckpts.driver_state(name)["version"]
    return cfg.run_dir / "adapters" / f"v{version}" if version else None


def evaluate_run(
    run_dir: str | Path, checkpoint: int | None = None, adapter: str | Path | None = None, overrides=()
) -> dict:
    """Evaluation (greedy unless eval.temperature > 0) of a run's policy (a checkpoint's, or any
    adapter folder) with the run's config.yaml plus dotted overrides (`env.id=...`, `eval.episodes=...`)."""
    from actors.placement import start_runners, start_samplers
    from learner.weight_sync import pack
    from vlmq.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    cfg.out_dir, cfg.name = (
        str(run_dir.absolute().parent),
        run_dir.absolute().name,
    )  # the folder may have moved
    if cfg.sampler.backend == "scripted":
        adapter, policy = None, f"scripted {cfg.sampler.policy}"
    else:
        adapter = adapter or checkpoint_adapter(cfg, checkpoint)
        policy = str(adapter or "base model")
    log.info("evaluating %s on %s, %d episodes", policy, cfg.env.id, cfg.eval.episodes)
    init_ray()
    with tempfile.TemporaryDirectory(prefix="vlmq-eval-") as state:  # not the run's own sampler state
        samplers = start_samplers(cfg, state)
        runners = []
        try:
            if adapter is not None:
                blob = ray.put(pack(adapter))
                ray.get([s.load_adapter.remote(1, blob) for s in samplers])
            runners = start_runners(cfg, samplers, None)
            out = evaluate_policy(runners, cfg.eval.episodes, cfg.eval.seed)
        finally:
            for a in runners + samplers:
                ray.kill(a)
    return {"policy": policy, "env": cfg.env.id, **out}
