"""Where the actors run: samplers on GPUs when the cluster has them, runners spread across nodes.

Runners use Ray's SPREAD scheduling strategy (best effort: each runner goes to the least loaded
node), so env stepping, which is CPU work, uses every node's cores. A sampler asks for one GPU when
the cluster has GPUs (vLLM / transformers then see exactly that device) and otherwise
`sampler.num_cpus` CPUs, which its engine runs as threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from actors.env_runner import EnvRunner
from actors.sampler import Sampler
from vlmq.config import RunConfig


def start_samplers(
    cfg: RunConfig,
    state_root: str | Path | None = None,
    backend: Any = None,
    model_files: tuple | None = None,
) -> list:
    """`sampler.num_samplers` Sampler actors, restarted by Ray when they die; each keeps its newest
    verified adapter under `state_root/sampler-<i>` (default: `<run dir>/samplers`) to reload it then.
    `model_files` (learner.model_files.ship) serves nodes that cannot see `model.path`."""
    gpus = ray.cluster_resources().get("GPU", 0) >= 1 and cfg.sampler.backend != "scripted"
    root = Path(state_root) if state_root is not None else cfg.run_dir / "samplers"
    samplers = [
        Sampler.options(
            num_gpus=1 if gpus else 0,
            num_cpus=1 if gpus else cfg.sampler.num_cpus,  # Ray sets OMP_NUM_THREADS to it
            max_restarts=-1,
            scheduling_strategy="SPREAD",
            resources=cfg.sampler.resources,
        ).remote(
            cfg.sampler, cfg.model, str(root.absolute() / f"sampler-{i}"), cfg.seed + i, backend, model_files
        )
        for i in range(cfg.sampler.num_samplers)
    ]
    ray.get([s.ping.remote() for s in samplers])  # a failing constructor surfaces here
    return samplers


def start_runners(cfg: RunConfig, samplers: list, replay: Any, num_cpus: float = 1) -> list:
    """`runner.num_runners` EnvRunner actors spread across nodes; each rotates its calls over the samplers."""
    return [start_runner(cfg, samplers, replay, i, num_cpus) for i in range(cfg.runner.num_runners)]


def start_runner(cfg: RunConfig, samplers: list, replay: Any, index: int, num_cpus: float = 1):
    """One EnvRunner. Ray does not restart it: its episodes in flight die with it, and the driver
    starts a new one in its place (a new episode-id tag, on whichever node has room)."""
    return EnvRunner.options(
        num_cpus=num_cpus, max_restarts=0, scheduling_strategy="SPREAD", resources=cfg.runner.resources
    ).remote(cfg, samplers, replay, index)
