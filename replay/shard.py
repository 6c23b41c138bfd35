"""A replay shard: a protected offline partition and a FIFO online partition, persisted to disk.

Online turns are held as a list of Arrow tables (one per flushed segment, plus the unflushed
tail), so `add` is a columnar append, O(batch). Every unflushed turn is written as one Parquet
segment once `flush_turns` are waiting or the oldest has waited `flush_seconds` (a background
thread checks the clock).

Durability: `add` returns only once its turns are on disk. An add that fills the flush bound writes
the segment itself; a smaller one appends its rows to a write-ahead file `wal-<first seq>.arrow`
(and its new images to the image store) first, and the next segment write deletes those files. A
restarted shard (Ray `max_restarts`) rebuilds itself from its folder: the segments' online tail
within capacity, then the write-ahead rows no segment holds, then the offline datasets listed in
`offline.json`. So no acknowledged turn is lost, and Ray's retry of an add that was in flight finds
its turns held and stores none twice.

Layout under `<root>/shard-<i>/`: `seg-<first seq>.parquet`, `wal-<first seq>.arrow`,
`images/<hh>/<hash>.png`, `offline.json`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections import Counter, OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from replay.store import (
    ImageStore,
    encode_png,
    list_segments,
    open_root,
    read_folder,
    read_segments,
    write_file,
    write_segment,
)
from replay.turn import (
    SCHEMA,
    Turn,
    TurnError,
    check_table,
    from_ipc,
    image_refs,
    rows_to_turns,
    to_ipc,
    turns_to_table,
)
from vlmq.config import ReplayConfig, validate_replay

_MERGE_ROWS = 65536  # in-memory online chunks grow to about this many rows
_MIN_SEQ = b"vlmq.min_seq"  # segment metadata: the oldest seq the shard held when it was written
_EPISODES = b"vlmq.episodes"  # segment metadata: episodes ended in this shard up to its last row


def shard_of(episode_id: str, num_shards: int) -> int:
    """Stable routing of a whole episode to one shard (the same in every process)."""
    return zlib.crc32(episode_id.encode()) % num_shards


def _take(tables: list[pa.Table], idx: np.ndarray) -> pa.Table:
    """Rows `idx` of the tables taken end to end, in O(len(idx) + len(tables)); Arrow's own take on
    a many-chunk table would first concatenate everything."""
    starts = np.cumsum([0] + [t.num_rows for t in tables])
    which = np.searchsorted(starts, idx, side="right") - 1
    parts = [tables[c].take(idx[which == c] - starts[c]) for c in np.unique(which)]
    return pa.concat_tables(parts)


def _keys(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table.column("episode_id").to_pylist(), table.column("turn_index").to_pylist()))


def _episode_ends(table: pa.Table) -> int:
    """Rows that end an episode (terminated or truncated): episodes, counted by their last turn."""
    return int(pc.sum(pc.or_(table.column("terminated"), table.column("truncated"))).as_py() or 0)


class Shard:
    """The shard's logic, usable in-process; `ReplayShard` is the same class as a Ray actor."""

    def __init__(self, root: str, cfg: ReplayConfig | None = None, index: int = 0, num_shards: int = 1):
        self.cfg = cfg or ReplayConfig()
        validate_replay(self.cfg)
        self.index, self.num_shards = index, num_shards
        self.fs, base = open_root(root)
        self.dir = f"{base}/shard-{index:03d}"
        self.fs.makedirs(self.dir, exist_ok=True)
        self.images = ImageStore(self.fs, f"{self.dir}/images")
        self._lock = threading.RLock()
        self._online: list[pa.Table] = []  # oldest first; the last `_unflushed_chunks` are not on disk
        self._online_rows = 0
        self._unflushed_chunks = 0
        self._oldest_unflushed = 0.0  # monotonic time of the oldest unflushed add
        self._segments: list[tuple[str, int]] = []  # (path, last seq) of segments on disk, in order
        self._keys: set[tuple[str, int]] = set()  # (episode_id, turn_index) held online: retries are no-ops
        self._refs: Counter[str] = Counter()  # image hash -> references from online rows
        self._on_disk: set[str] = set()  # hashes in this shard's image store
        self._wal: list[str] = []  # write-ahead files of the unflushed rows, deleted once in a segment
        self._episodes = 0  # episodes ever ended in this shard (with `_next_seq`: what it has stored)
        self._dead: set[str] = set()  # hashes whose references dropped to 0; deleted at the next flush
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # decoded images, LRU by bytes
        self._cache_bytes = 0
        self._offline: list[pa.Table] = []
        self._offline_rows = 0
        self._datasets: list[str] = []
        self._offline_images: dict[str, ImageStore] = {}  # hash -> the dataset store holding it
        self._next_seq = 0
        self._rng = np.random.default_rng()
        self._counts = Counter()  # added, duplicates, evicted, flushes, flushed
        self._bad_segments: list[str] = []
        self._age_turns = self._age_s = float("nan")
        self._restore()
        self._stop = threading.Event()
        threading.Thread(target=self._flush_loop, daemon=True, name="replay-flush").start()

    # ---- persistence -------------------------------------------------------------------------
    def _restore(self) -> None:
        """Reload the flushed online tail (newest segments first, up to capacity) and the datasets."""
        paths = list_segments(self.fs, self.dir)
        for p in [p for p in self.fs.ls(self.dir, detail=False) if p.endswith(".tmp")]:
            self.fs.rm(p)  # a write the previous incarnation did not finish
        if paths:
            good, self._bad_segments = read_segments(self.fs, paths)
            min_seq = 0
            if good:  # the newest segment knows what was still held when it was written
                meta = good[-1][1].schema.metadata or {}
                min_seq = int(meta.get(_MIN_SEQ, b"0"))
                self._episodes = int(meta.get(_EPISODES, b"0"))
            for path, table in good:
                table = table.replace_schema_metadata(None)
                last = table.column("seq")[-1].as_py() if table.num_rows else -1
                if last < min_seq:
                    self.fs.rm(path)  # fully evicted before the crash
                    continue
                table = table.filter(pc.greater_equal(table.column("seq"), min_seq))
                self._online.append(table)
                self._online_rows += table.num_rows
                self._segments.append((path, last))
                self._next_seq = max(self._next_seq, last + 1)
            for table in self._online:
                self._keys.update(_keys(table))
                self._refs.update(image_refs(table))
            if self._online:  # one chunk: the segments' boundaries do not matter in memory
                self._online = [pa.concat_tables(self._online).combine_chunks()]
        self._restore_wal()
        self._on_disk = set(self._refs)
        self._evict()
        self._flush()  # the write-ahead rows into a segment (a no-op without them)
        offline_file = f"{self.dir}/offline.json"
        if self.fs.exists(offline_file):
            with self.fs.open(offline_file, "r") as f:
                for dataset in json.load(f):
                    self._load_dataset(dataset)

    def _restore_wal(self) -> None:
        """Acknowledged rows that no segment holds: the write-ahead files' rows from `_next_seq` on."""
        try:
            names = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return
        self._wal = sorted(
            p for p in names if p.rsplit("/", 1)[-1].startswith("wal-") and p.endswith(".arrow")
        )
        for path in self._wal:
            with self.fs.open(path, "rb") as f:
                table = from_ipc(f.read())
            table = table.filter(pc.greater_equal(table.column("seq"), self._next_seq))
            if table.num_rows:
                self._append(table, _keys(table), image_refs(table))

    def _flush_loop(self) -> None:
        tick = min(self.cfg.flush_seconds / 4, 0.5)
        while not self._stop.wait(tick):
            with self._lock:
                if (
                    self._unflushed_chunks
                    and time.monotonic() - self._oldest_unflushed >= self.cfg.flush_seconds
                ):
                    self._flush()

    def _flush(self) -> int:
        """Write the unflushed tail as one segment (images first, so a segment never references a
        missing image), then delete segments and images that the FIFO has dropped."""
        k = min(self._unflushed_chunks, len(self._online))
        if k == 0:  # everything unflushed was evicted: its write-ahead files hold nothing to keep
            for wal in self._wal:
                self.fs.rm(wal)
            self._wal.clear()
            self._unflushed_chunks = 0
            return 0
        table = pa.concat_tables(self._online[-k:]).combine_chunks()
        first, last = table.column("seq")[0].as_py(), table.column("seq")[-1].as_py()
        min_seq = self._online[0].column("seq")[0].as_py()
        path = f"{self.dir}/seg-{first:012d}.parquet"
        meta = {_MIN_SEQ: str(min_seq).encode(), _EPISODES: str(self._episodes).encode()}
        write_segment(self.fs, path, table.replace_schema_metadata(meta))
        for wal in self._wal:  # their rows are in the segment now
            self.fs.rm(wal)
        self._wal.clear()
        self._online[-k:] = [table]
        self._unflushed_chunks = 0
        while (
            len(self._online) >= 2
            and self._online[-2].num_rows <= self._online[-1].num_rows <= _MERGE_ROWS // 2
        ):
            # merge small chunks like a binary counter (few copies per row): fewer chunks, cheaper takes
            self._online[-2:] = [pa.concat_tables(self._online[-2:]).combine_chunks()]
        self._segments.append((path, last))
        self._counts["flushes"] += 1
        self._counts["flushed"] += table.num_rows
        while self._segments and self._segments[0][1] < min_seq:
            self.fs.rm(self._segments.pop(0)[0])
        for h in self._dead:
            if self._refs.get(h, 0) == 0:
                self._refs.pop(h, None)
                if h in self._on_disk:
                    self.images.remove(h)
                    self._on_disk.discard(h)
        self._dead.clear()
        return table.num_rows

    def close(self) -> None:
        """Flush and stop the background flusher (in-process use; an actor just dies)."""
        self._stop.set()
        self.flush()

    def flush(self) -> int:
        """Write everything unflushed now; returns the number of turns written."""
        with self._lock:
            return self._flush()

    # ---- writing -----------------------------------------------------------------------------
    def add(self, turns: list[Turn] | pa.Table | bytes, images: dict[str, np.ndarray] | None = None) -> int:
        """Append turns: a list of Turn, or a table from turns_to_table (or its to_ipc bytes) with
        its images.

        Turns already held (same episode_id and turn_index) are skipped, so a retried call adds
        nothing twice. Bad input raises before anything changes. Returns the number added.
        """
        if isinstance(turns, (bytes, pa.Table)):
            table = from_ipc(turns) if isinstance(turns, bytes) else turns
            table, images = check_table(table, where="add()"), dict(images or {})
        else:
            table, images = turns_to_table(list(turns))
        if table.num_rows == 0:
            return 0
        with self._lock:
            keys = _keys(table)
            if len(set(keys)) != len(keys):
                raise TurnError("add(): the same (episode_id, turn_index) appears twice in one batch")
            keep = [k not in self._keys for k in keys]
            if not all(keep):
                self._counts["duplicates"] += keep.count(False)
                table = table.filter(pa.array(keep))
                keys = [k for k, ok in zip(keys, keep) if ok]
                if table.num_rows == 0:
                    return 0
            new_images, hashes = {}, image_refs(table)
            for h in set(hashes):
                if h in self._on_disk:
                    continue
                if h not in images and h not in self._offline_images:
                    raise TurnError(
                        f"add(): image {h} is neither passed with the turns nor held by the replay"
                    )
                if h in images:  # into this shard's store even if a dataset shows it: datasets can go
                    new_images[h] = images[h]
            n = table.num_rows
            seq = pa.array(np.arange(self._next_seq, self._next_seq + n, dtype=np.int64))
            table = table.set_column(SCHEMA.get_field_index("seq"), "seq", seq)
            for h, img in new_images.items():  # before any row that shows them is on disk
                self.images.put(h, encode_png(img))
                self._on_disk.add(h)
            unflushed = sum(t.num_rows for t in self._online[len(self._online) - self._unflushed_chunks :])
            if unflushed + n < self.cfg.flush_turns:  # no segment now: the write-ahead file makes it durable
                wal = f"{self.dir}/wal-{self._next_seq:012d}.arrow"
                write_file(self.fs, wal, to_ipc(table))
                self._wal.append(wal)
            self._append(table, keys, hashes)
            self._counts["added"] += n
            if unflushed + n >= self.cfg.flush_turns:
                self._flush()
            return n

    def _append(self, table: pa.Table, keys: list[tuple[str, int]], hashes: list[str]) -> None:
        """Rows with their seq set (with their keys and image references) join the online tail, unflushed."""
        n = table.num_rows
        self._next_seq = table.column("seq")[-1].as_py() + 1
        self._episodes += _episode_ends(table)
        self._keys.update(keys)
        self._refs.update(hashes)
        if self._unflushed_chunks == 0:
            self._oldest_unflushed = time.monotonic()
        self._online.append(table)
        self._online_rows += n
        self._unflushed_chunks += 1
        self._evict()

    def _evict(self) -> None:
        """FIFO: drop the oldest online rows beyond capacity. The offline partition is never touched."""
        excess = self._online_rows - self.cfg.online_capacity
        while excess > 0:
            head = self._online[0]
            if head.num_rows <= excess:
                dropped = self._online.pop(0)
            else:
                dropped, self._online[0] = head.slice(0, excess), head.slice(excess)
            excess -= dropped.num_rows
            self._online_rows -= dropped.num_rows
            self._counts["evicted"] += dropped.num_rows
            self._keys.difference_update(_keys(dropped))
            for h in image_refs(dropped):
                self._refs[h] -= 1
                if self._refs[h] == 0:
                    self._dead.add(h)
        self._unflushed_chunks = min(self._unflushed_chunks, len(self._online))

    # ---- offline -----------------------------------------------------------------------------
    def _load_dataset(self, dataset_dir: str) -> int:
        table, bad = read_folder(dataset_dir)
        self._bad_segments += bad
        if self.num_shards > 1:  # this shard's episodes only, routed like online adds
            mine = [
                shard_of(e, self.num_shards) == self.index for e in table.column("episode_id").to_pylist()
            ]
            table = table.filter(pa.array(mine))
        fs, path = open_root(dataset_dir)
        store = ImageStore(fs, f"{path}/images")
        for h in image_refs(table):
            self._offline_images[h] = store
        self._offline.append(table.combine_chunks())
        self._offline_rows += table.num_rows
        self._datasets.append(dataset_dir)
        return table.num_rows

    def load_offline(self, dataset_dir: str) -> int:
        """Load a dataset folder into the offline partition (this shard's episodes of it), once;
        it is remembered in offline.json and reloaded after a restart. Returns offline turns held."""
        with self._lock:
            if dataset_dir not in self._datasets:
                self._load_dataset(dataset_dir)
                with self.fs.open(f"{self.dir}/offline.json", "w") as f:
                    json.dump(self._datasets, f)
            return self._offline_rows

    # ---- reading -----------------------------------------------------------------------------
    def _image(self, h: str) -> np.ndarray:
        img = self._cache.get(h)
        if img is not None:
            self._cache.move_to_end(h)
            return img
        # online images live in this shard's store, offline ones in their dataset's
        store = None if h in self._on_disk else self._offline_images.get(h)
        img = (store or self.images).get(h)
        img = img.view()
        img.setflags(write=False)  # shared by every turn that shows it: nobody may draw on it
        self._cache[h] = img
        self._cache_bytes += img.nbytes
        while self._cache_bytes > self.cfg.image_cache_mb * 2**20 and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return img

    def stored(self) -> tuple[int, int]:
        """(turns, episodes) this shard has ever stored online, evicted ones included; it survives a
        restart (seq numbers and the segments' episode count), so a resumed job counts on from it."""
        return self._next_seq, self._episodes

    def sizes(self) -> tuple[int, int]:
        """(offline, online) turns held; what the client needs to split a batch across shards."""
        return self._offline_rows, self._online_rows

    def take(
        self, n_offline: int, n_online: int, seed: int | None = None
    ) -> tuple[bytes, dict[str, np.ndarray]]:
        """Uniform draws with replacement, `n_offline` from offline and `n_online` from online, as
        rows (to_ipc bytes) plus their decoded images. The client builds the Turns, so that Python
        work happens in the sampling process and Ray moves bytes and arrays, not Python objects."""
        with self._lock:
            if (n_offline and not self._offline_rows) or (n_online and not self._online_rows):
                raise ValueError(
                    f"replay shard {self.index}: asked for {n_offline} offline and {n_online} online turns "
                    f"but holds {self._offline_rows} offline and {self._online_rows} online"
                )
            rng = self._rng if seed is None else np.random.default_rng(seed)
            parts = []
            if n_offline:
                parts.append(_take(self._offline, rng.integers(0, self._offline_rows, n_offline)))
            if n_online:
                online = _take(self._online, rng.integers(0, self._online_rows, n_online))
                self._age_turns = float(self._next_seq - np.mean(online.column("seq").to_numpy()))
                self._age_s = float(time.time() - np.mean(online.column("wall_time").to_numpy()))
                parts.append(online)
            table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
            hashes = set(image_refs(table))
            return to_ipc(table), {h: self._image(h) for h in hashes}

    def sample(self, n: int, offline_fraction: float, seed: int | None = None) -> list[Turn]:
        """`round(n * offline_fraction)` offline turns and the rest online; when one partition is
        empty the other fills the whole batch."""
        if n < 0 or not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(
                f"sample: need n >= 0 and 0 <= offline_fraction <= 1, got {n}, {offline_fraction}"
            )
        n_off = split_offline(n, offline_fraction, self._offline_rows, self._online_rows)
        rows, images = self.take(n_off, n - n_off, seed)
        return rows_to_turns(from_ipc(rows), images.__getitem__)

    def stats(self) -> dict:
        with self._lock:

            def versions(tables: list[pa.Table]) -> dict[int, int]:
                if not tables:
                    return {}
                vc = pc.value_counts(pa.chunked_array([t.column("policy_version") for t in tables]))
                return {int(d["values"]): int(d["counts"]) for d in vc.to_pylist()}

            return {
                "shard": self.index,
                "pid": os.getpid(),
                "cpu_s": time.process_time(),  # this process's CPU time: cost per turn on a busy machine
                "dir": self.fs.unstrip_protocol(self.dir),
                "offline": self._offline_rows,
                "online": self._online_rows,
                "capacity": self.cfg.online_capacity,
                "unflushed": sum(
                    t.num_rows for t in self._online[len(self._online) - self._unflushed_chunks :]
                ),
                "segments": len(self._segments),
                "next_seq": self._next_seq,
                "episodes": self._episodes,
                "images_stored": len(self._on_disk),
                "images_cached": len(self._cache),
                "sample_age_turns": self._age_turns,
                "sample_age_s": self._age_s,
                "policy_versions": {"offline": versions(self._offline), "online": versions(self._online)},
                "datasets": list(self._datasets),
                "bad_segments": list(self._bad_segments),
                **{k: self._counts[k] for k in ("added", "duplicates", "evicted", "flushes", "flushed")},
            }


def split_offline(n: int, fraction: float, offline: int, online: int) -> int:
    """How many of n draws come from offline: the fraction, unless a partition is empty."""
    if offline + online == 0:
        raise ValueError("replay is empty: add turns or load_offline a dataset before sampling")
    if offline == 0:
        return 0
    if online == 0:
        return n
    return int(round(n * fraction))


ReplayShard = ray.remote(Shard)
