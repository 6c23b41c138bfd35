"""Weight sync, the one module: the learner's LoRA travels as bytes; a sampler unpacks, loads and
verifies it before serving it.

    learner:  blob = adapter_bytes(peft_model)                         # a peft folder, tarred
    driver:   sampler.load_adapter.remote(version, blob, probe)        # the same bytes to every sampler
    sampler:  folder = unpack(blob, dir); backend.load_lora(version, folder)
              probe_error(backend, probe, version) <= tolerance, else the old version serves on

The folder is the standard peft layout (adapter_config.json + adapter_model.safetensors) that vLLM
and transformers both load. The critic heads are not in it: samplers only need the policy. Bytes,
not paths, so a learner and a sampler on different nodes need no shared filesystem. The probe is a
fixed prompt and continuation with the learner's own log-probs of it: a sampler that computes
different ones loaded something else.
"""

from __future__ import annotations

import io
import math
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class Probe:
    """A fixed prompt and continuation with the learner's log-probs of it under the pushed adapter."""

    messages: list[dict]
    images: list[np.ndarray]
    gen_ids: list[int]
    logprobs: list[float]

    @classmethod
    def of(cls, probe: Probe | dict | None) -> Probe | None:
        """A Probe from a Probe, a dict with its fields (images optional) or None."""
        if probe is None or isinstance(probe, Probe):
            return probe
        if not isinstance(probe, dict):
            raise TypeError(f"probe must be a Probe, a dict or None, got {type(probe).__name__}")
        missing = {"messages", "gen_ids", "logprobs"} - probe.keys()
        if missing:
            raise ValueError(f"probe is missing {sorted(missing)}; needs messages, images, gen_ids, logprobs")
        images = list(probe.get("images") or [])
        return cls(probe["messages"], images, list(probe["gen_ids"]), list(probe["logprobs"]))


def adapter_bytes(peft_model) -> bytes:
    """The LoRA weights of a peft model, as the bytes a sampler loads."""
    with tempfile.TemporaryDirectory(prefix="vlmq-adapter-") as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        return pack(tmp)


def pack(adapter_dir: str | Path) -> bytes:
    """An adapter folder as an uncompressed tar in memory (safetensors do not compress)."""
    d = Path(adapter_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ADAPTER_FILES:
            path = d / name
            if not path.exists():
                raise FileNotFoundError(f"{d} is not an adapter folder: {name} is missing")
            tar.add(path, arcname=name)
    return buf.getvalue()


def unpack(data: bytes, out_dir: str | Path) -> Path:
    """Inverse of pack; refuses members other than the adapter files (no path tricks)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if member.name not in ADAPTER_FILES or not member.isfile():
                raise ValueError(f"unexpected member {member.name!r} in an adapter archive")
            (out / member.name).write_bytes(tar.extractfile(member).read())
    return out


def probe_error(backend: Any, probe: Probe, version: int) -> float:
    """Max |log-prob difference| between the backend serving `version` and the learner (inf if the
    backend scored a different number of tokens)."""
    got = backend.score(probe.messages, probe.images, probe.gen_ids, version)
    if len(got) != len(probe.logprobs) or not got:
        return math.inf
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(probe.logprobs, np.float64))))
