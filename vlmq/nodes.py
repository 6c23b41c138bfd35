"""What each node of the cluster can see: one zero-CPU task pinned to every node that matters.

On a cluster whose nodes share no filesystem, a local path means a different folder (or nothing) on
each node. These checks run before anything is stored, so such a path fails at start, naming the node.
"""

from __future__ import annotations

import uuid

import fsspec
import ray


@ray.remote(num_cpus=0)
def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def nodes_without(url: str, needs: dict[str, float] | None = None) -> list[dict]:
    """The alive nodes (those with the resources `needs`, if given) on which `url` does not exist."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    needs = needs or {}
    nodes = [
        n for n in ray.nodes()
        if n["Alive"] and all(n["Resources"].get(k, 0) >= v for k, v in needs.items() if v > 0)
    ]  # fmt: skip
    pinned = [
        _exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        for n in nodes
    ]
    return [n for n, ok in zip(nodes, ray.get([task.remote(url) for task in pinned])) if not ok]


def check_reachable(url: str, needs: dict[str, float], key: str) -> None:
    """Fail unless every node that may hold the role (one with `needs`) sees the storage root `url`:
    the driver writes a marker there and each such node looks for it (Ray and fsspec only: replay uses it). A local path that is not on
    shared storage fails here, instead of each node keeping files of its own."""
    fs, path = fsspec.core.url_to_fs(url)
    marker = f"{path}/.vlmq-reachable-{uuid.uuid4().hex[:12]}"
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(marker, b"")
    try:
        missing = nodes_without(fs.unstrip_protocol(marker), needs)
        if missing:
            n = missing[0]
            raise FileNotFoundError(
                f"{key} {url} is not reachable from node {n['NodeManagerAddress']} ({n['NodeID'][:8]}): "
                "put it on storage every node mounts at the same path, or use an fsspec URL (s3://...)"
            )
    finally:
        fs.rm(marker)
