"""Adapter versions for the samplers: a standard peft folder (adapter_config.json +
adapter_model.safetensors) that vLLM and transformers both load, and its bytes for the Ray object store.
The critic heads are not part of it: samplers only need the policy."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_adapter(model, out_dir: str | Path) -> Path:
    """Write the LoRA weights of a DualHeadModel to out_dir; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.peft.save_pretrained(str(out), safe_serialization=True)
    missing = [f for f in ADAPTER_FILES if not (out / f).exists()]
    if missing:
        raise RuntimeError(f"peft did not write {missing} to {out}")
    return out


def pack(adapter_dir: str | Path) -> bytes:
    """The adapter folder as an uncompressed tar in memory (safetensors do not compress)."""
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
