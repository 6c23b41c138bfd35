"""One turn of an episode, and its columnar (Arrow) form on the wire and on disk.

A `Turn` is what an EnvRunner produces and what the learner consumes. It carries everything the
learner needs to bootstrap without looking up a neighbour: the next turn's prompt (`next_messages`,
`next_images`) unless the episode terminated. Images are `np.uint8 (H, W, 3)` arrays in memory; in a
table they are referenced by content hash (`image_hash`) and stored once, as PNG, in an image store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class TurnError(ValueError):
    """A malformed turn; the message names the turn and the field."""


@dataclass
class Turn:
    episode_id: str
    turn_index: int
    env_id: str
    seed: int  # the env's reset seed for this episode
    messages: list[dict[str, Any]]  # HF chat messages of the prompt, {"type": "image"} placeholders
    images: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8, in placeholder order
    image_hashes: list[str] = field(default_factory=list)  # filled by the replay; the on-disk reference
    prompt_ids: list[int] | None = None  # the sampler's prompt token ids, when it gave them
    gen_ids: list[int] | None = None  # generated token ids; None for text policies (scripted data)
    action_text: str = ""  # the raw output text
    action: str | None = None  # the parsed legal action, None on a syntax error
    reward: float = 0.0  # env reward plus syntax penalty, unscaled
    syntax_ok: bool = True
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    policy_version: int = -1  # the LoRA version that generated it; -1: scripted/random, no model
    logprobs: list[float] | None = None  # behaviour log-probs of gen_ids
    wall_time: float = 0.0  # unix seconds when the turn finished
    next_messages: list[dict[str, Any]] | None = None  # None only when terminated
    next_images: list[np.ndarray] = field(default_factory=list)
    next_image_hashes: list[str] = field(default_factory=list)


# One schema for the wire, the shard's segments and dataset files. `messages` are JSON strings
# because chat content is heterogeneous; `seq` is the shard's arrival counter (dataset: row order).
SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("turn_index", pa.int32()),
        ("env_id", pa.string()),
        ("seed", pa.int64()),
        ("messages", pa.string()),
        ("image_hashes", pa.list_(pa.string())),
        ("prompt_ids", pa.list_(pa.int32())),
        ("gen_ids", pa.list_(pa.int32())),
        ("action_text", pa.string()),
        ("action", pa.string()),
        ("reward", pa.float64()),
        ("syntax_ok", pa.bool_()),
        ("terminated", pa.bool_()),
        ("truncated", pa.bool_()),
        ("success", pa.bool_()),
        ("policy_version", pa.int64()),
        ("logprobs", pa.list_(pa.float64())),
        ("wall_time", pa.float64()),
        ("next_messages", pa.string()),
        ("next_image_hashes", pa.list_(pa.string())),
        ("seq", pa.int64()),
    ]
)
_JSON_COLS = ("messages", "next_messages")


def image_hash(img: np.ndarray) -> str:
    """Content address of an image: blake2b over shape and bytes (two images differing only in
    shape must not collide)."""
    h = hashlib.blake2b(repr(img.shape).encode(), digest_size=16)
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()


def count_placeholders(messages: Any) -> int:
    """The `{"type": "image"}` parts of chat messages: one image each, in order."""
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            n += sum(1 for c in content if isinstance(c, dict) and c.get("type") == "image")
    return n


def _check_images(where: str, name: str, images: list, hashes: list, messages: Any) -> list[str]:
    """Validate one image list; return its hashes (computed from the arrays when given)."""
    for j, img in enumerate(images):
        if not (
            isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        ):
            desc = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}".strip()
            raise TurnError(f"{where}: {name}[{j}] must be a np.uint8 array of shape (H, W, 3), got {desc}")
    out = [image_hash(a) for a in images] if images else list(hashes)
    if not all(isinstance(h, str) for h in out):
        raise TurnError(f"{where}: {name.replace('images', 'image_hashes')} must be strings")
    placeholders = count_placeholders(messages)
    if placeholders != len(out):
        raise TurnError(f"{where}: the prompt has {placeholders} image placeholder(s) but {len(out)} {name}")
    return out


def _int_list(where: str, name: str, value: Any, optional: bool) -> list[int] | None:
    if value is None:
        if optional:
            return None
        raise TurnError(f"{where}: {name} is required")
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):  # the elements are checked by Arrow, see _to_arrays
        raise TurnError(f"{where}: {name} must be a list of ints, got {value!r:.80}")
    return value


def turns_to_table(turns: list[Turn]) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Validate `turns` and convert them to one table plus the unique images by hash.

    Raises TurnError naming the first bad turn and field; nothing is converted partially, so a
    caller that stores only after this returns loses nothing on bad input.
    """
    images: dict[str, np.ndarray] = {}
    seen: set[tuple[str, int]] = set()
    hashes, next_hashes, msg_json, next_json, gen_ids, prompt_ids, logprobs = ([] for _ in range(7))
    as_json: dict[int, str] = {}  # a runner's next_messages is usually the next turn's messages object

    def dumps(where: str, messages: list) -> str:
        if id(messages) not in as_json:
            try:
                as_json[id(messages)] = json.dumps(messages)
            except TypeError as err:
                raise TurnError(f"{where}: messages are not JSON-serialisable: {err}") from None
        return as_json[id(messages)]

    for i, t in enumerate(turns):
        if not isinstance(t, Turn):
            raise TurnError(f"turns[{i}] is a {type(t).__name__}, not a replay.turn.Turn")
        where = f"turns[{i}] (episode {t.episode_id!r}, turn {t.turn_index})"
        if not isinstance(t.episode_id, str) or not t.episode_id:
            raise TurnError(f"{where}: episode_id must be a non-empty string")
        if not isinstance(t.turn_index, (int, np.integer)) or t.turn_index < 0:
            raise TurnError(f"{where}: turn_index must be an int >= 0")
        key = (t.episode_id, int(t.turn_index))
        if key in seen:
            raise TurnError(f"{where}: the same (episode_id, turn_index) appears twice in one batch")
        seen.add(key)
        if not isinstance(t.messages, list) or not t.messages:
            raise TurnError(f"{where}: messages must be a non-empty list of chat messages")
        hashes.append(_check_images(where, "images", t.images, t.image_hashes, t.messages))
        images.update(zip(hashes[-1], t.images))
        msg_json.append(dumps(where, t.messages))
        if t.next_messages is None:
            if not t.terminated:
                raise TurnError(
                    f"{where}: not terminated, so next_messages (the bootstrap prompt) is required"
                )
            if t.next_images or t.next_image_hashes:
                raise TurnError(f"{where}: next_images given without next_messages")
            next_hashes.append([])
            next_json.append(None)
        else:
            if not isinstance(t.next_messages, list):
                raise TurnError(f"{where}: next_messages must be a list of chat messages or None")
            next_hashes.append(
                _check_images(where, "next_images", t.next_images, t.next_image_hashes, t.next_messages)
            )
            images.update(zip(next_hashes[-1], t.next_images))
            next_json.append(dumps(where, t.next_messages))
        gen = _int_list(where, "gen_ids", t.gen_ids, optional=True)
        lp = t.logprobs.tolist() if isinstance(t.logprobs, np.ndarray) else t.logprobs
        if lp is not None and (gen is None or len(lp) != len(gen)):
            n_gen = 0 if gen is None else len(gen)
            raise TurnError(f"{where}: logprobs has {len(lp)} entries but gen_ids has {n_gen}")
        gen_ids.append(gen)
        logprobs.append(lp)
        prompt_ids.append(_int_list(where, "prompt_ids", t.prompt_ids, optional=True))
        if not isinstance(t.reward, (int, float, np.floating, np.integer)) or not np.isfinite(t.reward):
            raise TurnError(f"{where}: reward must be a finite number, got {t.reward!r}")
        for name in ("syntax_ok", "terminated", "truncated", "success"):
            if not isinstance(getattr(t, name), (bool, np.bool_)):
                raise TurnError(f"{where}: {name} must be a bool, got {getattr(t, name)!r}")
    cols = {
        "episode_id": [t.episode_id for t in turns],
        "turn_index": [t.turn_index for t in turns],
        "env_id": [t.env_id for t in turns],
        "seed": [t.seed for t in turns],
        "messages": msg_json,
        "image_hashes": hashes,
        "prompt_ids": prompt_ids,
        "gen_ids": gen_ids,
        "action_text": [t.action_text for t in turns],
        "action": [t.action for t in turns],
        "reward": [t.reward for t in turns],
        "syntax_ok": [t.syntax_ok for t in turns],
        "terminated": [t.terminated for t in turns],
        "truncated": [t.truncated for t in turns],
        "success": [t.success for t in turns],
        "policy_version": [t.policy_version for t in turns],
        "logprobs": logprobs,
        "wall_time": [t.wall_time for t in turns],
        "next_messages": next_json,
        "next_image_hashes": next_hashes,
        "seq": [-1] * len(turns),
    }
    return pa.Table.from_arrays(_to_arrays(cols), schema=SCHEMA), images


def _to_arrays(cols: dict[str, list]) -> list[pa.Array]:
    """Arrow checks element types in C; on failure, find the row to name it."""
    arrays = []
    for f in SCHEMA:
        try:
            arrays.append(pa.array(cols[f.name], type=f.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            for i, value in enumerate(cols[f.name]):
                try:
                    pa.array([value], type=f.type)
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    where = f"turns[{i}] (episode {cols['episode_id'][i]!r}, turn {cols['turn_index'][i]})"
                    raise TurnError(f"{where}: {f.name} does not fit {f.type}: {value!r:.80}") from None
            raise TurnError(f"turns: column {f.name} does not fit {f.type}: {err}") from None
    return arrays


def image_refs(table: pa.Table) -> list[str]:
    """Every image reference of the rows (prompt and next prompt), with repeats."""
    return [
        h for c in ("image_hashes", "next_image_hashes") for h in pc.list_flatten(table.column(c)).to_pylist()
    ]


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC bytes: what crosses Ray (several times cheaper than pickling a Table)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def check_table(table: pa.Table, where: str = "table") -> pa.Table:
    """A table from the wire or a file must have exactly the replay schema (column order aside)."""
    names = set(table.schema.names)
    missing = [n for n in SCHEMA.names if n not in names]
    extra = [n for n in table.schema.names if n not in SCHEMA.names]
    if missing or extra:
        raise TurnError(f"{where}: not a turn table; missing columns {missing}, unexpected columns {extra}")
    table = table.select(SCHEMA.names)
    if not table.schema.equals(SCHEMA):
        try:
            table = table.cast(SCHEMA)
        except (pa.ArrowException, ValueError) as err:
            raise TurnError(f"{where}: columns do not fit the turn schema: {err}") from None
    return table


def rows_to_turns(table: pa.Table, load_image) -> list[Turn]:
    """Table rows back to Turns; `load_image(hash) -> np.ndarray` fills the image arrays."""
    turns = []
    for row in table.to_pylist():
        row.pop("seq", None)
        for name in _JSON_COLS:
            if row[name] is not None:
                row[name] = json.loads(row[name])
        row["images"] = [load_image(h) for h in row["image_hashes"]]
        row["next_images"] = [load_image(h) for h in row["next_image_hashes"]]
        turns.append(Turn(**row))
    return turns
