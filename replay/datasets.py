"""Datasets of turns: write them, summarise them, export them (collecting them is `actors/collect.py`).

A dataset is a folder: `seg-<n>.parquet` segments (the turn schema of replay.turn), `images/`
(PNG by content hash) and `meta.json` (how it was made, and the segments with their row counts,
so a missing file is noticed). It loads with plain pyarrow and with
`datasets.load_dataset("parquet", data_files="DIR/seg-*.parquet")`, and as an offline partition
with `ReplayClient.load_offline(DIR)`.

Scripted data (random, expert, epsilon, malformed policies) has `policy_version = -1`, no token
ids and no log-probs: no model produced it, so the learner tokenizes `action_text` itself. Data of
the base model (`data.policy: model`) is version 0 and carries the sampler's ids and log-probs.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replay.store import ImageStore, encode_png, list_segments, open_root, read_folder, write_segment
from replay.turn import Turn, turns_to_table

FORMAT = "vlmq-turns/1"


class DatasetWriter:
    """Writes a new dataset folder segment by segment; `close` writes meta.json. Use it to save
    turns from any source (e.g. a model served by the sampler) as a dataset."""

    def __init__(self, out: str):
        self.fs, self.path = open_root(out)
        if list_segments(self.fs, self.path):
            raise FileExistsError(f"{out} already holds a dataset; choose a new folder")
        self.fs.makedirs(self.path, exist_ok=True)
        self.images = ImageStore(self.fs, f"{self.path}/images")
        self.stored: set[str] = set()
        self.segments: dict[str, int] = {}

    def write(self, table: pa.Table, pngs: dict[str, bytes]) -> None:
        """One segment: a table from turns_to_table plus its images as PNG bytes by hash."""
        for h, png in pngs.items():
            if h not in self.stored:
                self.images.put(h, png)
                self.stored.add(h)
        start = sum(self.segments.values())
        seq = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
        table = table.set_column(table.schema.get_field_index("seq"), "seq", seq)
        name = f"seg-{len(self.segments):06d}.parquet"
        write_segment(self.fs, f"{self.path}/{name}", table)
        self.segments[name] = table.num_rows

    def write_turns(self, turns: list[Turn]) -> None:
        table, images = turns_to_table(turns)
        self.write(table, {h: encode_png(img) for h, img in images.items()})

    def close(self, meta: dict | None = None) -> None:
        meta = {
            "format": FORMAT,
            **(meta or {}),
            "turns": sum(self.segments.values()),
            "images": len(self.stored),
            "segments": self.segments,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self.fs.open(f"{self.path}/meta.json", "w") as f:
            json.dump(meta, f, indent=2)


def read_meta(path: str) -> dict | None:
    """A dataset folder's (or URL's) meta.json, or None where it has none."""
    fs, root = open_root(path)
    if not fs.exists(f"{root}/meta.json"):
        return None
    with fs.open(f"{root}/meta.json", "r") as f:
        return json.load(f)


def info(path: str) -> dict:
    """Counts, episode return and success statistics, syntax-error rate; unreadable segments by name."""
    table, bad = read_folder(path)
    fs, root = open_root(path)
    meta = read_meta(path) or {}
    per_ep = table.group_by("episode_id").aggregate([("reward", "sum"), ("turn_index", "count")])
    returns = per_ep.column("reward_sum").to_numpy()
    ends = table.filter(pc.or_(table.column("terminated"), table.column("truncated")))
    images = fs.find(f"{root}/images") if fs.exists(f"{root}/images") else []
    versions = pc.value_counts(table.column("policy_version")).to_pylist()
    return {
        "path": fs.unstrip_protocol(root),
        "env_ids": sorted(set(table.column("env_id").to_pylist())),
        "policy": meta.get("policy"),
        "obs_mode": meta.get("obs_mode"),
        "turns": table.num_rows,
        "episodes": per_ep.num_rows,
        "complete_episodes": ends.num_rows,
        "mean_episode_length": float(np.mean(per_ep.column("turn_index_count").to_numpy())),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "min_return": float(np.min(returns)),
        "max_return": float(np.max(returns)),
        "success_rate": float(np.mean(ends.column("success").to_numpy(zero_copy_only=False)))
        if ends.num_rows
        else 0.0,
        "syntax_error_rate": 1.0 - float(np.mean(table.column("syntax_ok").to_numpy(zero_copy_only=False))),
        "policy_versions": {int(d["values"]): int(d["counts"]) for d in versions},
        "images": len(images),
        "image_bytes": int(sum(fs.size(p) for p in images)),
        "segment_bytes": int(sum(fs.size(p) for p in list_segments(fs, root))),
        "segments": len(list_segments(fs, root)),
        "bad_segments": bad,
    }


def export(path: str, out: str, fmt: str = "jsonl") -> str:
    """All readable turns to one file: JSONL (one turn per line, messages as JSON objects) or one
    Parquet file. Images stay in the dataset's images/ folder, referenced by hash."""
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"export: format must be jsonl or parquet, got {fmt!r}")
    table, bad = read_folder(path)
    fs, target = open_root(out)
    parent = target.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if fmt == "parquet":
        with fs.open(target, "wb") as f:
            pq.write_table(table, f, compression="zstd")
    else:
        with fs.open(target, "w") as f:
            for row in table.to_pylist():
                for key in ("messages", "next_messages"):
                    if row[key] is not None:
                        row[key] = json.loads(row[key])
                f.write(json.dumps(row) + "\n")
    skipped = f" ({len(bad)} unreadable segments skipped: {', '.join(bad)})" if bad else ""
    return f"wrote {table.num_rows} turns to {fs.unstrip_protocol(target)}{skipped}"
