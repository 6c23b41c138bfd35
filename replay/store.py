"""Files of turns on any fsspec filesystem: Parquet segments and a content-addressed PNG store.

One layout serves replay shards and datasets alike: a folder of `seg-*.parquet` files (the turn
schema of replay.turn) beside `images/<hh>/<hash>.png`. A shard folder therefore loads as a dataset.
"""

from __future__ import annotations

import io
import json
import warnings

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from replay.turn import check_table


class CorruptSegment(UserWarning):
    """A segment file that could not be read; the message names the file."""


def open_root(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """`root` (a path or any fsspec URL) -> (filesystem, path without protocol)."""
    if not root:
        raise ValueError("replay storage root is empty; give a path or an fsspec URL")
    fs, path = fsspec.core.url_to_fs(root)
    return fs, path.rstrip("/") or "/"


def absolute_url(root: str) -> str:
    """A URL that means the same thing in every process (a relative local path would not)."""
    fs, path = open_root(root)
    return fs.unstrip_protocol(path)


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class ImageStore:
    """Images by content hash under `path`; writing the same hash twice is harmless."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path = fs, path

    def file(self, h: str) -> str:
        return f"{self.path}/{h[:2]}/{h}.png"

    def put(self, h: str, png: bytes) -> None:
        self.fs.makedirs(f"{self.path}/{h[:2]}", exist_ok=True)
        with self.fs.open(self.file(h), "wb") as f:
            f.write(png)

    def get(self, h: str) -> np.ndarray:
        try:
            with self.fs.open(self.file(h), "rb") as f:
                return decode_png(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"image {h} is missing from {self.fs.unstrip_protocol(self.path)}"
            ) from None

    def remove(self, h: str) -> None:
        try:
            self.fs.rm(self.file(h))
        except FileNotFoundError:
            pass


def write_file(fs: fsspec.AbstractFileSystem, path: str, data) -> None:
    """Write atomically where the filesystem allows (temp file, then rename): a reader, or a
    restarted shard, never sees half a file."""
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_segment(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> int:
    """A table as one zstd Parquet file, written atomically; returns bytes."""
    sink = pa.BufferOutputStream()  # encode in C++, then one write (a Python file gets many small ones)
    pq.write_table(table, sink, compression="zstd", write_statistics=False)
    data = sink.getvalue()
    write_file(fs, path, data)
    return data.size


def list_segments(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Segment paths in name order (names sort by arrival)."""
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return sorted(p for p in names if p.rsplit("/", 1)[-1].startswith("seg-") and p.endswith(".parquet"))


def read_segment(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return check_table(pq.read_table(f), where=fs.unstrip_protocol(path))


def read_segments(
    fs: fsspec.AbstractFileSystem, paths: list[str]
) -> tuple[list[tuple[str, pa.Table]], list[str]]:
    """Read what can be read. A corrupt or missing file is warned about by name and skipped, so one
    bad file does not cost the rest; the names come back as `bad`."""
    good, bad = [], []
    for path in paths:
        try:
            good.append((path, read_segment(fs, path)))
        except Exception as err:  # any read error of one file: name it, keep going
            name = fs.unstrip_protocol(path)
            warnings.warn(f"skipping unreadable turn segment {name}: {err}", CorruptSegment, stacklevel=2)
            bad.append(name)
    return good, bad


def read_folder(root: str) -> tuple[pa.Table, list[str]]:
    """All turns of a dataset (or shard) folder as one table, and the names of the segment files
    that could not be read: corrupt ones, and ones meta.json lists that are missing (each warned)."""
    fs, path = open_root(root)
    paths = list_segments(fs, path)
    listed = []
    if fs.exists(f"{path}/meta.json"):
        with fs.open(f"{path}/meta.json", "r") as f:
            listed = list(json.load(f).get("segments", {}))
    missing = [fs.unstrip_protocol(f"{path}/{name}") for name in listed if f"{path}/{name}" not in paths]
    for name in missing:
        warnings.warn(f"turn segment {name} is listed in meta.json but missing", CorruptSegment, stacklevel=2)
    good, bad = read_segments(fs, paths)
    if not good:
        raise FileNotFoundError(f"no readable turn segments (seg-*.parquet) in {fs.unstrip_protocol(path)}")
    table = pa.concat_tables([t.replace_schema_metadata(None) for _, t in good])
    return table, missing + bad
