"""Replay: turn round trip, image dedup, FIFO vs offline, sampling ratios, bad input, corrupt
segments, and a shard actor killed under concurrent writers."""

from __future__ import annotations

import pickle
import time
from collections import Counter

import numpy as np
import pytest
import ray

from replay.client import ReplayClient, start_replay
from replay.datasets import DatasetWriter
from replay.shard import Shard, shard_of
from replay.store import CorruptSegment, read_folder
from replay.turn import Turn, TurnError, image_hash, turns_to_table
from vlmq.config import ReplayConfig

IMAGES = [np.full((6, 5, 3), k, dtype=np.uint8) for k in range(4)]  # few distinct images: dedup shows


def prompt(k: int, image: bool = True) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": f"state {k}"}]
    return [{"role": "user", "content": content}]


def episode(
    episode_id: str, length: int = 4, version: int = 0, images: bool = True, truncated: bool = False
) -> list[Turn]:
    """A complete episode (cut by a time limit if `truncated`); every field set to something distinguishable."""
    turns = []
    for t in range(length):
        end = t == length - 1
        last = end and not truncated  # terminated: nothing to bootstrap from
        gen = [t + 1, t + 2, 7]
        turns.append(
            Turn(
                episode_id=episode_id,
                turn_index=t,
                env_id="fake",
                seed=17,
                messages=prompt(t, images),
                images=[IMAGES[t % 4]] if images else [],
                prompt_ids=[5, t, 9] if t % 2 == 0 else None,
                gen_ids=gen,
                action_text=f'{{"action": "a{t}"}}' if t != 1 else "garbage",
                action=f"a{t}" if t != 1 else None,
                reward=1.5 if last else (-1.0 if t == 1 else 0.0),
                syntax_ok=t != 1,
                terminated=last,
                truncated=end and truncated,
                success=last,
                policy_version=version,
                logprobs=[-0.25, -0.5, -0.125 * t],
                wall_time=1_700_000_000.0 + t,
                next_messages=None if last else prompt(t + 1, images),
                next_images=[] if last or not images else [IMAGES[(t + 1) % 4]],
            )
        )
    return turns


def episodes(prefix: str, n: int, length: int = 4, version: int = 0, images: bool = True) -> list[Turn]:
    return [t for e in range(n) for t in episode(f"{prefix}-{e}", length, version, images)]


def assert_same(a: Turn, b: Turn) -> None:
    """Every field equal; images by value; hashes those of the images."""
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if name in ("images", "next_images"):
            assert len(x) == len(y) and all(
                np.array_equal(i, j) and j.dtype == np.uint8 for i, j in zip(x, y)
            ), name
        elif name in ("image_hashes", "next_image_hashes"):  # filled in by the replay
            assert y == [image_hash(i) for i in getattr(a, name.replace("_hashes", "s"))], name
        else:
            assert x == y, (name, x, y)


def shard(root: str, **cfg) -> Shard:
    return Shard(root, ReplayConfig(**{"flush_turns": 8, "flush_seconds": 60.0, **cfg}))


def every_turn(s: Shard) -> dict[tuple[str, int], Turn]:
    """All held turns: a large uniform sample covers 40 turns with probability 1 - 1e-20."""
    return {(t.episode_id, t.turn_index): t for t in s.sample(3000, 0.5, seed=0)}


@pytest.fixture
def mem_root(request) -> str:
    return f"memory://{request.node.name}"


def test_round_trip_every_field_and_images_deduplicated(mem_root):
    turns = episodes("rt", 10)  # 40 turns, 4 distinct images referenced 40 + 30 times
    s = shard(mem_root)
    assert s.add(turns[:25]) == 25 and s.add(turns[25:]) == 15
    s.close()
    again = shard(mem_root)  # a new incarnation reads everything back from storage
    held = every_turn(again)
    assert len(held) == 40
    for t in turns:
        assert_same(t, held[(t.episode_id, t.turn_index)])
    pngs = [p for p in again.fs.find(again.dir) if p.endswith(".png")]
    assert len(pngs) == 4 and again.stats()["images_stored"] == 4
    again.close()


def test_fifo_eviction_never_touches_offline_and_offline_fraction(tmp_path, mem_root):
    writer = DatasetWriter(str(tmp_path / "ds"))
    writer.write_turns(episodes("off", 25, version=-1))  # 100 offline turns
    writer.close()
    s = shard(mem_root, online_capacity=60)
    assert s.load_offline(str(tmp_path / "ds")) == 100
    for k in range(10):  # 400 online turns through a 60-turn FIFO
        s.add(episodes(f"on{k}", 10, version=k))
    st = s.stats()
    assert (st["offline"], st["online"], st["evicted"]) == (100, 60, 340)
    assert st["policy_versions"] == {"offline": {-1: 100}, "online": {8: 20, 9: 40}}  # the newest 60
    # a single shard splits exactly; within a partition draws are uniform
    batch = s.sample(2000, 0.3, seed=1)
    offline = [t for t in batch if t.policy_version == -1]
    assert len(offline) == 600
    counts = Counter((t.episode_id, t.turn_index) for t in batch if t.policy_version >= 0)
    assert len(counts) == 60 and max(counts.values()) < 1400 / 60 + 5 * (1400 / 60) ** 0.5
    assert all(t.policy_version == -1 for t in s.sample(50, 1.0))
    assert all(t.policy_version >= 8 for t in s.sample(50, 0.0))
    s.close()
    restarted = shard(mem_root, online_capacity=60)  # offline.json brings the dataset back
    assert restarted.sizes() == (100, 60)
    # online turns show the dataset's images, and the shard stored its own copies: they still load
    assert len(restarted.sample(200, 0.0, seed=2)) == 200
    restarted.close()


def test_disk_tail_within_capacity_and_restart_never_resurrects_evicted(mem_root):
    s = shard(mem_root, online_capacity=30, flush_turns=12)
    for k in range(20):
        s.add(episode(f"e{k}", version=k))
    s.close()
    segs = [p for p in s.fs.ls(s.dir, detail=False) if p.endswith(".parquet")]
    assert len(segs) <= 4  # fully evicted segments are deleted
    held = every_turn(shard(mem_root, online_capacity=30, flush_turns=12))
    assert sorted({t.policy_version for t in held.values()}) == [12, 13, 14, 15, 16, 17, 18, 19]
    assert len(held) == 30
    pngs = [p for p in s.fs.find(s.dir) if p.endswith(".png")]
    assert len(pngs) == 4  # images of evicted turns that are still referenced stay


def test_bad_input_is_named_and_loses_nothing(mem_root):
    s = shard(mem_root)
    good = episodes("good", 3)
    s.add(good)
    before = s.stats()
    cases = [
        (dict(logprobs=[0.1]), "logprobs has 1 entries but gen_ids has 3"),
        (
            dict(images=[np.zeros((4, 4), np.uint8)]),
            r"images\[0\] must be a np.uint8 array of shape \(H, W, 3\)",
        ),
        (dict(images=[np.zeros((4, 4, 3), np.float32)]), "images"),
        (dict(images=[]), "1 image placeholder"),
        (dict(next_messages=None), "next_messages .* is required"),
        (dict(gen_ids=[1, "x", 3], logprobs=[0.0, 0.0, 0.0]), "gen_ids"),
        (dict(reward=float("nan")), "reward must be a finite number"),
        (dict(terminated="no"), "terminated must be a bool"),
        (dict(episode_id=""), "episode_id must be a non-empty string"),
        (dict(messages=[{"role": "user", "content": [{"type": "image"}, {"x": object()}]}]), "JSON"),
    ]
    for change, message in cases:
        batch = episodes("new", 2)
        for k, v in change.items():
            setattr(batch[2], k, v)
        with pytest.raises(TurnError, match=message) as err:
            s.add(batch)
        assert "turns[2] (episode 'new-0', turn 2)" in str(err.value) or change.get("episode_id") == ""
    with pytest.raises(TurnError, match="appears twice"):
        s.add(good[:2] + good[:1])
    with pytest.raises(TurnError, match="not a replay.turn.Turn"):
        s.add([{"episode_id": "x"}])
    orphan = episode("orphan", length=1)
    orphan[0].images = [np.full((6, 5, 3), 99, np.uint8)]  # an image the shard has never seen
    table, _ = turns_to_table(orphan)
    with pytest.raises(TurnError, match="neither passed with the turns nor held"):
        s.add(table, {})
    with pytest.raises(TurnError, match="missing columns"):
        s.add(table.drop_columns(["reward"]), {})
    after = s.stats()
    assert {k: after[k] for k in ("online", "next_seq", "added")} == {
        k: before[k] for k in ("online", "next_seq", "added")
    }
    held = every_turn(s)
    assert len(held) == 12 and all(k[0].startswith("good") for k in held)
    s.close()


def test_retried_add_is_idempotent(mem_root):
    s = shard(mem_root)
    batch = episodes("r", 2)
    assert s.add(batch) == 8 and s.add(batch) == 0 and s.add(batch[3:] + episode("r-new")) == 4
    assert s.stats()["duplicates"] == 13 and s.sizes() == (0, 12)
    s.close()


def test_corrupt_and_missing_segments_are_named_and_the_rest_loads(tmp_path, mem_root):
    ds = str(tmp_path / "ds")
    writer = DatasetWriter(ds)
    for k in range(3):
        writer.write_turns(episodes(f"seg{k}", 2))
    writer.close()
    (tmp_path / "ds" / "seg-000001.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "ds" / "seg-000002.parquet").unlink()
    with pytest.warns(CorruptSegment) as record:
        table, bad = read_folder(ds)
    text = " ".join(str(w.message) for w in record)
    assert "seg-000001.parquet" in text and "seg-000002.parquet" in text
    assert sorted(b.rsplit("/", 1)[-1] for b in bad) == ["seg-000001.parquet", "seg-000002.parquet"]
    assert table.num_rows == 8 and set(table.column("episode_id").to_pylist()) == {"seg0-0", "seg0-1"}
    s = shard(mem_root)
    with pytest.warns(CorruptSegment) as record:
        assert s.load_offline(ds) == 8
    assert len(record) == 2 and "seg-000001.parquet" in str(record[-1].message)
    assert len(s.stats()["bad_segments"]) == 2
    s.close()
    # the shard's own segments: a corrupt one is named at restart, the others reload
    own = shard("file://" + str(tmp_path / "replay"), flush_turns=4)
    for k in range(3):
        own.add(episode(f"own{k}"))
    own.close()
    victim = sorted(p for p in own.fs.ls(own.dir, detail=False) if p.endswith(".parquet"))[1]
    with open(victim, "wb") as f:
        f.write(b"garbage")
    with pytest.warns(CorruptSegment, match=victim.rsplit("/", 1)[-1]):
        back = shard("file://" + str(tmp_path / "replay"), flush_turns=4)
    assert back.sizes() == (0, 8)
    back.close()


def test_flush_bounds(mem_root):
    s = shard(mem_root, flush_turns=10, flush_seconds=0.3)
    s.add(episodes("a", 2))  # 8 < 10: waits for the clock
    assert s.stats()["unflushed"] == 8
    s.add(episode("b"))  # 12 >= 10: written at once
    assert s.stats()["unflushed"] == 0 and s.stats()["flushed"] == 12
    s.add(episode("c"))
    deadline = time.monotonic() + 5
    while s.stats()["unflushed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.stats()["unflushed"] == 0 and s.stats()["flushed"] == 16
    s.close()


def test_acknowledged_turns_survive_a_crash_before_any_flush(mem_root):
    s = shard(mem_root, flush_turns=10)
    s.add(episodes("a", 2, images=True))  # 8 < 10: no segment, a write-ahead file
    s.add(episode("b", images=False))  # 12: a segment, and the write-ahead file is gone
    s.add(episode("c", length=3, images=True, truncated=True))
    st = s.stats()
    assert st["unflushed"] == 3 and st["episodes"] == 4 and st["next_seq"] == 15
    wal = [p for p in s.fs.ls(s.dir, detail=False) if "/wal-" in p]
    assert [p.rsplit("/", 1)[-1] for p in wal] == ["wal-000000000012.arrow"]
    s._stop.set()  # the process dies: no close(), no flush
    # a crash between a segment's write and the write-ahead file's removal: its rows are in both
    s.fs.pipe(s.dir + "/wal-000000000000.arrow", s.fs.cat(wal[0]))
    restarted = shard(mem_root, flush_turns=10)
    held = every_turn(restarted)
    assert sorted(held) == sorted(
        (t.episode_id, t.turn_index) for t in episodes("a", 2) + episode("b") + episode("c", 3)
    )
    assert_same(episode("c", length=3, images=True, truncated=True)[2], held[("c", 2)])
    st = restarted.stats()
    assert st["online"] == 15 and st["unflushed"] == 0 and st["episodes"] == 4 and st["next_seq"] == 15
    assert not [p for p in restarted.fs.ls(restarted.dir, detail=False) if "/wal-" in p]
    restarted.close()


# ---- through Ray ------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
def _writer(client: ReplayClient, prefix: str, batches: int, pause: float) -> list[tuple[str, int]]:
    keys = []
    for b in range(batches):
        batch = episodes(f"{prefix}-{b}", 2, length=3, images=b % 2 == 0)
        client.add(batch)
        keys += [(t.episode_id, t.turn_index) for t in batch]
        time.sleep(pause)
    return keys


@pytest.mark.slow
def test_client_routes_episodes_and_samples_by_size(ray_local, tmp_path):
    cfg = ReplayConfig(num_shards=3, flush_turns=32)
    client = start_replay(cfg, str(tmp_path / "replay"))
    client = pickle.loads(pickle.dumps(client))  # it holds only handles
    writer = DatasetWriter(str(tmp_path / "ds"))
    writer.write_turns(episodes("off", 30, version=-1))
    writer.close()
    assert client.load_offline(str(tmp_path / "ds")) == 120
    turns = episodes("on", 60, version=3)
    assert client.add(turns) == 240
    per = client.stats()["shards"]
    for st in per:  # whole episodes per shard: 4 turns each
        assert st["online"] % 4 == 0 and st["offline"] % 4 == 0
    batch = client.sample(3000, 0.25, seed=0)
    assert len(batch) == 3000 and sum(t.policy_version == -1 for t in batch) == 750
    by_shard = Counter(shard_of(t.episode_id, 3) for t in batch if t.policy_version == 3)
    for st in per:  # online draws per shard follow its share of online turns
        p = st["online"] / 240
        assert abs(by_shard[st["shard"]] - 2250 * p) < 5 * (2250 * p * (1 - p)) ** 0.5
    held = {(t.episode_id, t.turn_index): t for t in batch}
    for t in turns + episodes("off", 30, version=-1):
        assert_same(t, held[(t.episode_id, t.turn_index)])
    bad = episodes("bad", 6)  # spread over the shards; one bad turn and none of them is added
    bad[13].reward = float("inf")
    with pytest.raises(TurnError, match=r"turns\[13\] \(episode 'bad-3', turn 1\): reward"):
        client.add(bad)
    stats = client.stats()
    assert stats["online"] == 240 and stats["offline"] == 120
    assert stats["policy_versions"] == {"offline": {-1: 120}, "online": {3: 240}}
    assert stats["sample_age_turns"] > 0
    # replay.seed: clients with one seed draw the same batches; another seed draws others
    draws = [
        [(t.episode_id, t.turn_index) for t in ReplayClient(client.shards, seed).sample(64, 0.25)]
        for seed in (7, 7, 8)
    ]
    assert draws[0] == draws[1] != draws[2]


@pytest.mark.slow
def test_killed_shard_restarts_with_every_acknowledged_turn_and_no_duplicates(ray_local, tmp_path):
    cfg = ReplayConfig(num_shards=1, flush_turns=40, flush_seconds=30.0)
    client = start_replay(cfg, "file://" + str(tmp_path / "replay"))
    (handle,) = client.shards
    flushed = ray.get([_writer.remote(client, f"a{w}", 10, 0.0) for w in range(2)])
    assert client.flush() > 0  # everything written so far is on disk
    client.add(episode("tail", 3))  # acknowledged, not in a segment
    assert ray.get(handle.stats.remote())["unflushed"] == 3
    pid = ray.get(handle.stats.remote())["pid"]
    writers = [_writer.remote(client, f"b{w}", 60, 0.01) for w in range(2)]
    deadline = time.monotonic() + 120
    while ray.get(handle.stats.remote())["added"] < 240 + 100 and time.monotonic() < deadline:
        time.sleep(0.02)  # kill it mid-stream, after ~100 turns of the second wave
    ray.kill(handle, no_restart=False)
    acked = ray.get(writers)  # in-flight calls are retried on the new incarnation
    after = ray.get(handle.stats.remote())
    assert after["pid"] != pid
    client.flush()
    table, bad = read_folder(after["dir"])
    keys = list(zip(table.column("episode_id").to_pylist(), table.column("turn_index").to_pylist()))
    assert not bad and len(keys) == len(set(keys)) == client.stats()["online"]  # nothing duplicated
    held = set(keys)
    assert set(k for w in flushed for k in w) <= held  # every flushed turn survived
    lost = set(k for w in acked for k in w) - held
    assert not lost and {("tail", i) for i in range(3)} <= held  # every acknowledged turn survived
