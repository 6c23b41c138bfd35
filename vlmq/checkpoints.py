"""A run's checkpoints under one storage root: a folder, or any fsspec URL (s3://bucket/run/ckpt).

    <root>/step_0000200/learner/      the learner's weights, optimizer and RNG (written by learner rank 0)
    <root>/step_0000200/driver.json   the driver's counters
    <root>/step_0000200/config.yaml   what a resume must match
    <root>/latest                     the newest complete checkpoint's name, written last

Each piece is written by the process that holds it, on its own node, to the same URL: no file
travels between nodes, so on a cluster without a shared filesystem the root must be shared storage
(an object store, or a mount every learner node has). Resume and `vlmq eval` read from here.
"""

from __future__ import annotations

import json
import uuid

from replay.store import absolute_url, open_root


def step_name(updates: int) -> str:
    return f"step_{updates:07d}"


class Checkpoints:
    def __init__(self, root: str):
        self.url = absolute_url(root)
        self.fs, self.path = open_root(self.url)

    def folder(self, name: str) -> str:
        """The URL of one checkpoint (or one piece of it: `folder(name) + "/learner"`)."""
        return self.fs.unstrip_protocol(f"{self.path}/{name}")

    def latest(self) -> str | None:
        """The newest complete checkpoint's name, or None."""
        pointer = f"{self.path}/latest"
        return self.fs.cat_file(pointer).decode().strip() if self.fs.exists(pointer) else None

    def names(self) -> list[str]:
        if not self.fs.exists(self.path):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False) if "/step_" in p)

    def write_text(self, name: str, file: str, text: str) -> None:
        self.fs.makedirs(f"{self.path}/{name}", exist_ok=True)
        self.fs.pipe_file(f"{self.path}/{name}/{file}", text.encode())

    def read_text(self, name: str, file: str) -> str | None:
        path = f"{self.path}/{name}/{file}"
        return self.fs.cat_file(path).decode() if self.fs.exists(path) else None

    def driver_state(self, name: str) -> dict:
        text = self.read_text(name, "driver.json")
        if text is None:
            raise FileNotFoundError(f"checkpoint {self.folder(name)} has no driver.json (not complete)")
        return json.loads(text)

    def commit(self, name: str) -> None:
        """Point `latest` at `name`: atomic on a local disk (rename) and on an object store (one put)."""
        tmp = f"{self.path}/.latest-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, name.encode())
        self.fs.mv(tmp, f"{self.path}/latest")
