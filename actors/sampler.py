"""Sampler: one inference backend behind a Ray actor, with versioned LoRA hot-swap and a probe check.

The versioning rules live in the plain class `VersionedSampler`, so they are tested directly against
the session's single vLLM engine; the Ray actor `Sampler` wraps it with Ray metrics. A `concurrent`
backend (vLLM's asynchronous engine) takes every runner's call at once, and the engine batches them
continuously; a loading adapter does not hold them up. The others (transformers, scripted) are called
one at a time, behind a micro-batching queue: many runners submit at once, one backend call serves them all.

Versions: 0 is the base model (always served); pushed versions must increase. The backend gives each
load a fresh LoRA id (vLLM serves stale weights when an id is reused). A pushed adapter (bytes, see
`learner/weight_sync.py`) is scored on the learner's probe and is refused when any log-prob differs by
more than `probe_tolerance`; the previous version keeps serving. The newest
`resident_versions` adapters stay loaded so in-flight episodes finish on their own version; a request
for an evicted version falls back to the newest and is counted (`stale_requests`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from actors.protocol import Completion, Request
from learner.model_files import local_model
from learner.weight_sync import Probe, pack, probe_error, unpack
from vlmq.config import ModelConfig, SamplerConfig, validate_sampler
from vlmq.metrics import SAMPLER, SPECS, Metrics

log = logging.getLogger(__name__)


@dataclass
class SamplerStats:
    version: int = 0
    resident: list[int] = field(default_factory=lambda: [0])
    requests: int = 0
    tokens: int = 0
    batches: int = 0
    batch_s: float = 0.0  # time in backend calls
    stale_requests: int = 0  # asked for an evicted version, served by the newest
    sync_ok: int = 0
    sync_failures: int = 0
    last_sync_error: str = ""
    last_sync_s: float = 0.0
    last_probe_err: float = 0.0
    restored_version: int = 0  # version reloaded from state_dir at start (a Ray restart)
    startup_s: float = 0.0  # building the backend: vLLM's engine cold start, or loading the hf model


class VersionedSampler:
    """The sampler's logic without Ray: version bookkeeping, probe verification, restart state.

    `state_dir` (optional) keeps the newest verified adapter (`v<N>/`: the peft folder, the probe as
    JSON and its images as safetensors; `newest.json` names it, replaced atomically) so that a
    sampler restarted by Ray reloads it (`restore`; the actor restores only when Ray reconstructed it,
    so a new job never inherits an old run's version). Use a path on the sampler's node, or a shared mount on a
    multi-node cluster where a restart may land elsewhere; without it a restarted sampler serves the
    base model until the learner's next push.
    """

    def __init__(
        self, backend: Any, cfg: SamplerConfig, state_dir: str | Path | None = None, restore: bool = True
    ):
        validate_sampler(cfg)
        self.backend = backend
        self.cfg = cfg
        self.stats = SamplerStats()
        self._resident: list[int] = [0]  # oldest first; 0 (the base model) never leaves
        self._dirs: dict[int, Path] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="vlmq-adapters-"))
        self._lock = threading.RLock()  # the version bookkeeping
        # A backend that is not `concurrent` gets one call at a time (generate, load, probe).
        self._calls = contextlib.nullcontext() if getattr(backend, "concurrent", False) else threading.Lock()
        self._in_flight: collections.Counter[int] = collections.Counter()  # version -> requests running
        self._evicted: set[int] = set()  # left the resident set, unloaded once its requests finish
        self._loading = threading.Lock()  # one push at a time, whatever the backend
        self.state_dir = Path(state_dir) if state_dir else None
        saved = self._saved() if restore and self.state_dir is not None else None
        if saved is not None and self.load_adapter(*saved, persist=False):
            self.stats.restored_version = saved[0]

    @property
    def version(self) -> int:
        return self.stats.version

    def load_adapter(
        self,
        version: int,
        adapter: str | Path | bytes,
        probe: Probe | dict | None = None,
        persist: bool = True,
    ) -> bool:
        """Load, verify, then serve `version`. False (and the old version keeps serving) on a failed probe."""
        with self._loading:
            return self._load(version, adapter, probe, persist)

    def _load(self, version: int, adapter: str | Path | bytes, probe, persist: bool) -> bool:
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"adapter version must be an int >= 1 (0 is the base model), got {version!r}")
        if version == self.version:
            return True  # a re-push after a driver retry
        if version < self.version:
            raise ValueError(f"adapter version {version} is older than the served version {self.version}")
        probe = Probe.of(probe)
        t0 = time.perf_counter()
        if isinstance(adapter, (bytes, bytearray)):
            path = unpack(bytes(adapter), Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=self._tmp)))
        else:
            path = Path(adapter)
            if not (path / "adapter_config.json").exists():
                raise FileNotFoundError(f"{path} is not a peft adapter folder (no adapter_config.json)")
        # Requests keep running on the served versions while this one loads and is probed.
        with self._calls:
            loaded = False
            try:
                self.backend.load_lora(version, str(path))
                loaded = True
                err = probe_error(self.backend, probe, version) if probe is not None else 0.0
            except Exception as e:  # a broken adapter is a failed sync too; the old version serves on
                self.stats.sync_failures += 1
                self.stats.last_sync_error = f"version {version}: {e!r}"
                if loaded:  # the probe itself failed: the unverified version must not stay loaded
                    try:
                        self.backend.unload_lora(version)
                    except Exception as unload_err:
                        log.warning("unloading unverified adapter version %d failed: %r", version, unload_err)
                if isinstance(adapter, (bytes, bytearray)):
                    self._drop_dir(path)
                raise
            self.stats.last_probe_err = err
            if not err <= self.cfg.probe_tolerance:  # also catches NaN
                self.backend.unload_lora(version)
                if isinstance(adapter, (bytes, bytearray)):
                    self._drop_dir(path)
                self.stats.sync_failures += 1
                self.stats.last_sync_error = (
                    f"version {version}: probe log-probs differ by {err:.3g} > tolerance "
                    f"{self.cfg.probe_tolerance}; still serving version {self.version}"
                )
                return False
        with self._lock:
            self._resident.append(version)
            if isinstance(adapter, (bytes, bytearray)):
                self._dirs[version] = path
            self.stats.version = version
            while len(self._resident) - 1 > self.cfg.resident_versions:  # evict the oldest adapter
                self._evicted.add(self._resident.pop(1))
            self.stats.resident = list(self._resident)
        self._unload_idle()
        self.stats.sync_ok += 1
        self.stats.last_sync_s = time.perf_counter() - t0
        if persist and self.state_dir is not None:
            self._save(version, path, probe)
        return True

    def _save(self, version: int, adapter_dir: Path, probe: Probe | None) -> None:
        """The restart state: plain files (no pickle: a shared volume must not hold code to run)."""
        d = self.state_dir / f"v{version}"
        unpack(pack(adapter_dir), d)
        meta = {"version": version, "probe": None}
        if probe is not None:
            meta["probe"] = {"messages": probe.messages, "gen_ids": probe.gen_ids, "logprobs": probe.logprobs}
            if probe.images:
                images = {f"image_{i}": np.ascontiguousarray(img) for i, img in enumerate(probe.images)}
                save_numpy(images, d / "probe_images.safetensors")
        (d / "probe.json").write_text(json.dumps(meta))
        tmp = self.state_dir / "newest.json.tmp"
        tmp.write_text(json.dumps({"folder": d.name}))
        os.replace(tmp, self.state_dir / "newest.json")  # atomic: a crash mid-write keeps the previous one
        for old in self.state_dir.glob("v*"):
            if old.name != d.name:
                self._drop_dir(old)

    def _saved(self) -> tuple[int, bytes, Probe | None] | None:
        """(version, adapter bytes, probe) of the newest saved adapter, or None."""
        pointer = self.state_dir / "newest.json"
        if not pointer.exists():
            return None
        d = self.state_dir / json.loads(pointer.read_text())["folder"]
        meta = json.loads((d / "probe.json").read_text())
        probe = meta["probe"]
        if probe is not None:
            file = d / "probe_images.safetensors"
            images = load_numpy(file) if file.exists() else {}
            probe["images"] = [images[f"image_{i}"] for i in range(len(images))]
        return meta["version"], pack(d), Probe.of(probe)

    def _drop_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def _unload_idle(self) -> None:
        """Unload the evicted versions no request runs on any more, outside the bookkeeping lock (an
        engine round trip must not hold up other callers). No request can pick them again, so a failed
        unload is logged, not raised: the caller's completions or push stand."""
        with self._lock:
            idle = sorted(v for v in self._evicted if not self._in_flight[v])
            self._evicted.difference_update(idle)
            dirs = [self._dirs.pop(v, None) for v in idle]
        for old, folder in zip(idle, dirs):
            try:
                with self._calls:
                    self.backend.unload_lora(old)
            except Exception as e:
                log.warning("unloading evicted adapter version %d failed: %r", old, e)
            if folder is not None:
                self._drop_dir(folder)

    def generate(self, requests: list[Request], version: int | None = None) -> list[Completion]:
        """Complete `requests` on `version` (None: the newest; an evicted one falls back to the newest)."""
        return self.generate_many([(requests, version)])[0]

    def generate_many(self, calls: list[tuple[list[Request], int | None]]) -> list[list[Completion]]:
        """Several callers' requests in one backend call per version (the micro-batch)."""
        with self._lock:  # resolve each call's version and hold it resident until its requests finish
            groups: dict[int, list[tuple[int, int]]] = {}
            for c, (requests, version) in enumerate(calls):
                v = self.version if version is None else version
                if v not in self._resident:
                    self.stats.stale_requests += len(requests)
                    v = self.version
                groups.setdefault(v, []).extend((c, i) for i in range(len(requests)))
                self._in_flight[v] += len(requests)
        out: list[list[Completion | None]] = [[None] * len(reqs) for reqs, _ in calls]
        t0 = time.perf_counter()
        try:
            for v, slots in groups.items():
                with self._calls:
                    completions = self.backend.generate([calls[c][0][i] for c, i in slots], v)
                for (c, i), comp in zip(slots, completions, strict=True):
                    if comp.version >= 0:  # -1: a scripted backend, no model version at all
                        comp.version = v
                    out[c][i] = comp
        finally:
            with self._lock:
                for v, slots in groups.items():
                    self._in_flight[v] -= len(slots)
                self.stats.tokens += sum(len(comp.gen_ids) for res in out for comp in res if comp)
                self.stats.batches += len(groups)
                self.stats.requests += sum(len(reqs) for reqs, _ in calls)
                self.stats.batch_s += time.perf_counter() - t0
            self._unload_idle()
        return out  # type: ignore[return-value]


def make_backend(cfg: SamplerConfig, model: ModelConfig, seed: int = 0) -> Any:
    """The backend named by `cfg.backend` (imported lazily: vLLM is heavy and absent on some machines)."""
    if cfg.backend == "scripted":
        from actors.scripted_backend import ScriptedBackend

        tokenizer = model.path if Path(model.path).exists() else None
        return ScriptedBackend(cfg.policy, tokenizer_path=tokenizer, seed=seed)
    if cfg.backend == "hf":
        from actors.hf_backend import HFBackend

        return HFBackend(model.path, text_only=model.text_only, dtype=model.dtype, seed=seed)
    if cfg.backend == "vllm":
        try:
            from actors.vllm_backend import VLLMBackend
        except ImportError as e:
            raise ImportError(
                f"sampler.backend vllm needs vLLM, which does not import here ({e}); install the project "
                "with its cpu or gpu extra (`make setup` does), or set sampler.backend=hf"
            ) from e

        return VLLMBackend(
            model.path,
            max_loras=cfg.resident_versions + 2,  # + the one being verified + an evicted one finishing
            max_lora_rank=max(16, model.lora_r),
            text_only=model.text_only,
            dtype=model.dtype,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=seed,
        )
    raise ValueError(f"unknown sampler.backend {cfg.backend!r}; valid: vllm, hf, scripted")


# Restarted when it dies; calls in flight then are retried by Ray once it is back (generate has no
# side effects), while the runner's own timeout bounds every wait.
@ray.remote(max_concurrency=64, max_restarts=-1, max_task_retries=-1)
class Sampler:
    """The Ray actor in front of a `VersionedSampler`. Concurrent `generate` calls (threads of this
    actor) go straight to a `concurrent` backend, whose engine batches them continuously. For the
    others they go on a queue that one worker thread drains, so every backend call serves all runners
    that were waiting (a micro-batch).
    """

    def __init__(
        self,
        cfg: SamplerConfig,
        model: ModelConfig,
        state_dir: str | None = None,
        seed: int = 0,
        backend: Any = None,
        model_files: tuple | None = None,
    ):
        self.cfg = cfg
        if backend is None and cfg.backend != "scripted":  # a node without model.path: the shipped copy
            model = local_model(model, model_files)
        with warnings.catch_warnings():  # Ray warns about its own internals here
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        t0 = time.perf_counter()
        backend = backend or make_backend(cfg, model, seed)
        startup_s = time.perf_counter() - t0
        self.core = VersionedSampler(backend, cfg, state_dir, self.restarted)
        self.core.stats.startup_s = startup_s
        self.started = time.time()
        self._queue: queue.Queue = queue.Queue()
        names = [n for n, s in SPECS.items() if s.tags == SAMPLER]
        self.metrics = Metrics(names, sampler=ray.get_runtime_context().get_actor_id()[:8])
        self.metrics.set("sampler_version", self.core.version)
        self.concurrent = getattr(backend, "concurrent", False)
        if not self.concurrent:
            threading.Thread(target=self._serve, daemon=True).start()

    def generate(self, requests: list[Request], version: int | None = None) -> list[Completion]:
        if not requests:
            return []
        if self.concurrent:
            t0 = time.perf_counter()
            (res,) = self.core.generate_many([(requests, version)])
            self.metrics.observe("sampler_batch_s", time.perf_counter() - t0)
            self.metrics.inc("sampler_tokens", sum(len(c.gen_ids) for c in res))
            return res
        fut: Future = Future()
        self._queue.put((requests, version, fut))
        return fut.result()

    def _serve(self) -> None:
        while True:
            items = [self._queue.get()]
            # a backlog is taken at once; a lone caller waits batch_wait_s for company
            wait = self._queue.empty()
            deadline = time.monotonic() + self.cfg.batch_wait_s
            n = len(items[0][0])
            while n < self.cfg.max_batch:
                try:
                    left = deadline - time.monotonic()
                    item = self._queue.get(timeout=left) if wait and left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                n += len(item[0])
            t0 = time.perf_counter()
            try:
                results = self.core.generate_many([(reqs, v) for reqs, v, _ in items])
            except BaseException as e:  # every waiting caller sees the error, the loop goes on
                for *_, fut in items:
                    fut.set_exception(e)
                continue
            self.metrics.observe("sampler_batch_s", time.perf_counter() - t0)
            self.metrics.inc("sampler_tokens", sum(len(c.gen_ids) for res in results for c in res))
            for (*_, fut), res in zip(items, results):
                fut.set_result(res)

    def load_adapter(self, version: int, adapter: str | bytes, probe: Probe | dict | None = None) -> bool:
        try:
            ok = self.core.load_adapter(version, adapter, probe)
        except Exception:
            self.metrics.inc("sampler_sync_failures")
            raise
        if ok:
            self.metrics.observe("sampler_sync_s", self.core.stats.last_sync_s)
            self.metrics.set("sampler_version", self.core.version)
        else:
            self.metrics.inc("sampler_sync_failures")
        return ok

    def version(self) -> int:
        return self.core.version

    def stats(self) -> dict:
        s = dict(vars(self.core.stats))
        s["mean_batch"] = s["requests"] / max(1, s["batches"])
        s["mean_batch_s"] = s["batch_s"] / s["batches"] if s["batches"] else float("nan")
        s["restarted"] = self.restarted
        s["uptime_s"] = time.time() - self.started
        s["node_id"] = ray.get_runtime_context().get_node_id()
        s["pid"] = os.getpid()
        return s

    def ping(self) -> bool:
        return True
