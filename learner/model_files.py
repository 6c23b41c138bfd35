"""The model folder on nodes that cannot see it.

`model.path` is a folder on the driver's node. On a cluster whose nodes share no filesystem the
learners and samplers elsewhere would not find it, so when some node at the job's start lacks it the
driver packs a folder of at most `SHIP_LIMIT_BYTES` once into Ray's object store (`ship`); a node
that joins later must see the path itself. Every actor that loads the model calls
`local_model(cfg, shipped)`: the path itself where it exists, else the shipped copy unpacked once per
node into a cache folder named by its content hash. A larger model must be on storage every node
mounts at the same path; a node that lacks it then fails naming the node and the path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import tarfile
import tempfile
from pathlib import Path

from vlmq.config import ModelConfig

SHIP_LIMIT_BYTES = 2 * 2**30
CACHE = Path(tempfile.gettempdir()) / "vlmq-models"


def ship(path: str | Path) -> tuple[str, object] | None:
    """(content hash, object ref of the folder's tar bytes), or None for a folder too large to ship."""
    import ray

    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    if sum(p.stat().st_size for p in files) > SHIP_LIMIT_BYTES:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(path)))
    data = buf.getvalue()
    return hashlib.blake2b(data, digest_size=12).hexdigest(), ray.put(data)


def local_model(cfg: ModelConfig, shipped: tuple[str, object] | None) -> ModelConfig:
    """`cfg` with a path this node can read: its own, or the shipped copy in the node's cache."""
    if (Path(cfg.path) / "config.json").exists() or "://" in cfg.path:  # a saved model, not an empty mount
        return cfg
    if shipped is None:
        raise FileNotFoundError(
            f"model.path {cfg.path} does not exist on node {socket.gethostname()}; put the model on "
            "storage every node mounts at that path"
        )
    import ray

    digest, ref = shipped
    folder = CACHE / digest
    if not folder.exists():  # once per node: a temp folder renamed into place, so readers never see half
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=CACHE))
        with tarfile.open(fileobj=io.BytesIO(ray.get(ref)), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, folder)
        except OSError:  # another actor on this node was first
            pass
    return dataclasses.replace(cfg, path=str(folder))
