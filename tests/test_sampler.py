"""Sampler: versioning rules (resident window, probe refusal, restart state), the hf backend's token
ids and log-probs against the learner's batch builder, LoRA hot-swap on the session vLLM engine, and
micro-batching in the Ray actor."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ray
import torch

from actors.hf_backend import HFBackend
from actors.protocol import Completion, Request
from actors.sampler import Sampler, VersionedSampler
from learner.weight_sync import ADAPTER_FILES, Probe, pack
from vlmq.config import LearnerConfig, ModelConfig, SamplerConfig

PROMPT = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": 'Position 3, target 7. "+" or "-"?'}],
    }
]
PROMPT2 = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Blackjack: hit or stand?"}]}
]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8)


class FakeBackend:
    """Each adapter folder's weight is its adapter_config.json length; log-probs are -weight."""

    def __init__(self):
        self.loaded: dict[int, float] = {0: 0.0}
        self.calls: list[tuple[int, int]] = []  # (version, batch size)

    def load_lora(self, version, path):
        from pathlib import Path

        self.loaded[version] = float(len((Path(path) / "adapter_config.json").read_text()))

    def unload_lora(self, version):
        del self.loaded[version]

    def score(self, messages, images, gen_ids, version):
        return [-self.loaded[version]] * len(gen_ids)

    def generate(self, requests, version):
        self.calls.append((version, len(requests)))
        w = self.loaded[version]
        return [Completion([1, 2], "x", [-w, -w], [7], version) for _ in requests]


def _adapter(tmp_path, n: int):
    d = tmp_path / f"adapter{n}"
    d.mkdir()
    (d / "adapter_config.json").write_text("{" + " " * n + "}")
    (d / "adapter_model.safetensors").write_bytes(b"w")
    return d


def _probe(weight: float) -> dict:
    return {"messages": PROMPT, "images": [], "gen_ids": [5, 6], "logprobs": [-weight, -weight]}


def test_versions_resident_window_refusal_and_restart_state(tmp_path):
    cfg = SamplerConfig(resident_versions=2, probe_tolerance=1e-3)
    backend = FakeBackend()
    s = VersionedSampler(backend, cfg, state_dir=tmp_path / "state")
    req = [Request(PROMPT, [], ["+"])]
    assert s.version == 0 and s.generate(req)[0].version == 0

    a1, a2, a3 = (_adapter(tmp_path, n) for n in (10, 20, 30))
    assert s.load_adapter(1, pack(a1), _probe(12.0))  # bytes through the "object store"
    assert s.generate(req)[0].logprobs == [-12.0, -12.0] and s.generate(req)[0].version == 1
    assert s.load_adapter(1, pack(a1), _probe(12.0))  # a re-push is a no-op
    # a wrong reference: refused, unloaded, counted, and version 1 keeps serving
    assert not s.load_adapter(2, str(a2), _probe(99.0))
    assert s.version == 1 and 2 not in backend.loaded
    assert s.stats.sync_failures == 1 and "differ by 77" in s.stats.last_sync_error
    assert s.generate(req)[0].version == 1
    assert s.load_adapter(2, str(a2), Probe(PROMPT, [], [5], [-22.0]))
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert s.load_adapter(3, pack(a3), dict(_probe(32.0), images=[image]))
    # resident: base + the newest 2; in-flight episodes of v2 still get v2, v1's fall back to the newest
    assert s.stats.resident == [0, 2, 3] and sorted(backend.loaded) == [0, 2, 3]
    assert s.generate(req, version=2)[0].logprobs == [-22.0, -22.0]
    assert s.generate(req, version=1)[0].version == 3 and s.stats.stale_requests == 1
    assert s.generate(req, version=0)[0].version == 0
    with pytest.raises(ValueError, match="older than the served version 3"):
        s.load_adapter(2, str(a2))
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        s.load_adapter(4, str(tmp_path))

    # a restarted sampler (same state dir, fresh backend) reloads and re-verifies the newest version
    restarted = VersionedSampler(FakeBackend(), cfg, state_dir=tmp_path / "state")
    assert restarted.version == 3 and restarted.stats.restored_version == 3
    # the state is plain files, no pickle: the peft folder and the probe, of the newest version only
    files = sorted(
        str(p.relative_to(tmp_path / "state")) for p in (tmp_path / "state").rglob("*") if p.is_file()
    )
    assert files == [
        "newest.json",
        *(f"v3/{f}" for f in ADAPTER_FILES),
        "v3/probe.json",
        "v3/probe_images.safetensors",
    ]
    np.testing.assert_array_equal(restarted._saved()[2].images[0], image)
    assert restarted.generate(req)[0].logprobs == [-32.0, -32.0]


def test_generate_many_groups_callers_by_version(tmp_path):
    backend = FakeBackend()
    s = VersionedSampler(backend, SamplerConfig(resident_versions=2))
    s.load_adapter(1, str(_adapter(tmp_path, 1)))
    r = Request(PROMPT, [], ["+"])
    out = s.generate_many([([r, r], None), ([r], 0), ([r, r, r], 1)])
    assert [[c.version for c in o] for o in out] == [[1, 1], [0], [1, 1, 1]]
    assert sorted(backend.calls) == [(0, 1), (1, 5)]  # one backend call per version


class SlowConcurrentBackend(FakeBackend):
    """A `concurrent` backend whose calls wait on events, to see what runs alongside what."""

    concurrent = True

    def __init__(self):
        super().__init__()
        self.loading, self.finish_load = threading.Event(), threading.Event()
        self.generating, self.finish_generate = threading.Event(), threading.Event()

    def load_lora(self, version, path):
        self.loading.set()
        assert self.finish_load.wait(10)
        super().load_lora(version, path)

    def generate(self, requests, version):
        if requests[0].max_tokens == 99:  # the slow one
            self.generating.set()
            assert self.finish_generate.wait(10)
        return super().generate(requests, version)


def test_a_concurrent_backend_serves_while_an_adapter_loads_and_keeps_a_busy_version(tmp_path):
    """With a concurrent backend nothing holds generation up during a load, and an evicted version
    stays loaded until the requests running on it finish."""
    backend = SlowConcurrentBackend()
    s = VersionedSampler(backend, SamplerConfig(resident_versions=1))
    backend.finish_load.set()
    s.load_adapter(1, str(_adapter(tmp_path, 1)))
    backend.finish_load.clear()
    backend.loading.clear()
    quick, slow = Request(PROMPT, [], ["+"]), Request(PROMPT, [], ["+"], max_tokens=99)

    load = threading.Thread(target=s.load_adapter, args=(2, str(_adapter(tmp_path, 2))))
    load.start()
    assert backend.loading.wait(10)
    assert s.generate([quick])[0].version == 1  # served while version 2 is still loading
    running = []
    slow_call = threading.Thread(target=lambda: running.append(s.generate([slow], version=1)))
    slow_call.start()
    assert backend.generating.wait(10)
    backend.finish_load.set()
    load.join(10)
    # version 2 serves; version 1 left the resident set but stays loaded for the request on it
    assert s.version == 2 and s.stats.resident == [0, 2] and 1 in backend.loaded
    assert s.generate([quick], version=1)[0].version == 2 and s.stats.stale_requests == 1
    backend.finish_generate.set()
    slow_call.join(10)
    assert running[0][0].version == 1 and running[0][0].logprobs == [-3.0, -3.0]
    assert sorted(backend.loaded) == [0, 2]  # unloaded once it finished


def test_a_failed_unload_of_an_evicted_version_is_logged_and_loses_nothing(tmp_path, caplog):
    """The evicted version can never be asked for again, so the push that evicts it still serves."""

    class BrokenUnload(FakeBackend):
        def unload_lora(self, version):
            raise RuntimeError("engine said no")

    s = VersionedSampler(BrokenUnload(), SamplerConfig(resident_versions=1))
    assert s.load_adapter(1, pack(_adapter(tmp_path, 1)))
    dirs = dict(s._dirs)
    assert s.load_adapter(2, pack(_adapter(tmp_path, 2)))  # evicts 1; its unload fails
    assert s.version == 2 and s.stats.resident == [0, 2] and not s._evicted
    assert "unloading evicted adapter version 1 failed" in caplog.text
    assert not dirs[1].exists()  # its unpacked folder is gone all the same
    assert s.generate([Request(PROMPT, [], ["+"])])[0].version == 2


def test_a_probe_that_raises_unloads_the_unverified_version(tmp_path):
    """The adapter loaded but its check failed with an error: the push raises, the old version serves
    on, and the new one does not stay loaded in the engine."""

    class BrokenScore(FakeBackend):
        def score(self, messages, images, gen_ids, version):
            raise RuntimeError("scoring broke")

    backend = BrokenScore()
    s = VersionedSampler(backend, SamplerConfig())
    with pytest.raises(RuntimeError, match="scoring broke"):
        s.load_adapter(1, pack(_adapter(tmp_path, 1)), _probe(0.0))
    assert sorted(backend.loaded) == [0] and s.version == 0 and s.stats.sync_failures == 1
    assert s.generate([Request(PROMPT, [], ["+"])])[0].version == 0


@pytest.fixture(scope="module")
def hf(tiny_vlm_dir):
    return HFBackend(str(tiny_vlm_dir), seed=0)


def assert_trains_token_for_token(turns, model_dir) -> None:
    """build_batch re-encodes each stored prompt and raises if the sampler's prompt_ids differ
    (token-in, token-out); its action tokens are the generated ids, and the model's log-probs at them
    are the stored behaviour log-probs."""
    from transformers import AutoModelForImageTextToText

    from learner.batch import build_batch
    from learner.processing import load_processor

    batch = build_batch(turns, load_processor(str(model_dir)), LearnerConfig())
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        s = batch.seqs
        logits = model(input_ids=s.input_ids, attention_mask=s.attention_mask, **s.images).logits
    lp = torch.log_softmax(logits.float(), -1)
    for b, t in enumerate(turns):
        n = len(t.gen_ids)
        assert batch.actions[b, :n].tolist() == list(t.gen_ids)
        ref = lp[b, batch.positions[b, :n]].gather(-1, batch.actions[b, :n, None]).squeeze(-1)
        np.testing.assert_allclose(t.logprobs, ref.numpy(), atol=1e-4)


@pytest.mark.slow
def test_hf_backend_ids_and_logprobs_match_the_learners_batch(hf, tiny_vlm_dir):
    from replay.turn import Turn

    reqs = [
        Request(PROMPT, [_image(0)], ["+", "-"], temperature=1.0, max_tokens=12),
        Request(PROMPT2, [_image(1)], ["hit", "stand"], temperature=1.0, max_tokens=7),
        Request(PROMPT, [_image(2)], ["+", "-"], temperature=0.0, max_tokens=9),
    ]
    comps = hf.generate(reqs, 0)
    for r, c in zip(reqs, comps):
        assert 1 <= len(c.gen_ids) <= r.max_tokens and len(c.logprobs) == len(c.gen_ids)
        assert hf.eos_id not in c.gen_ids[:-1]  # stops at EOS
        assert not set(c.gen_ids) & set(hf.suppress)  # never an image placeholder or other special token
        assert all(lp <= 0 for lp in c.logprobs) and c.version == 0
    turns = [
        Turn(f"e{i}", 0, "numberline", i, r.messages, r.images, prompt_ids=c.prompt_ids, gen_ids=c.gen_ids,
             action_text=c.text, logprobs=c.logprobs, terminated=True)
        for i, (r, c) in enumerate(zip(reqs, comps))
    ]  # fmt: skip
    assert_trains_token_for_token(turns, tiny_vlm_dir)
    # greedy is deterministic
    again = hf.generate([reqs[2]], 0)[0]
    assert again.gen_ids == comps[2].gen_ids


@pytest.mark.slow
def test_hf_lora_hot_swap_with_probe(hf, make_lora_adapter):
    s = VersionedSampler(hf, SamplerConfig(resident_versions=2, probe_tolerance=1e-4))
    a1, a2 = make_lora_adapter(seed=11), make_lora_adapter(seed=12)
    base = hf.generate([Request(PROMPT, [_image(0)], ["+"], temperature=0.0, max_tokens=6)], 0)[0]
    gen = base.gen_ids
    # the learner's reference: transformers + peft on the same adapter (here: the same backend class)
    hf.load_lora(991, str(a1))
    ref1 = hf.score(PROMPT, [_image(0)], gen, 991)
    hf.unload_lora(991)
    assert np.max(np.abs(np.array(ref1) - base.logprobs)) > 1e-3  # the adapter changes the policy
    assert s.load_adapter(1, pack(a1), Probe(PROMPT, [_image(0)], gen, ref1))
    assert not s.load_adapter(2, pack(a2), Probe(PROMPT, [_image(0)], gen, ref1))  # v2 is not v1
    assert s.version == 1 and s.stats.sync_failures == 1
    np.testing.assert_allclose(s.backend.score(PROMPT, [_image(0)], gen, s.version), ref1, atol=1e-5)


@pytest.mark.slow
def test_vllm_hot_swap_follows_versions_and_refuses_a_wrong_reference(
    vllm_backend, hf, make_lora_adapter, fresh_version
):
    """Versions through VersionedSampler on the suite's one vLLM engine; references from transformers+peft."""
    s = VersionedSampler(vllm_backend, SamplerConfig(resident_versions=2, probe_tolerance=1e-3))
    a1, a2 = make_lora_adapter(seed=21), make_lora_adapter(seed=22)
    v1, v_bad, v2 = fresh_version(), fresh_version(), fresh_version()
    probe_ids = hf.generate([Request(PROMPT, [_image(3)], ["+"], temperature=0.0, max_tokens=8)], 0)[
        0
    ].gen_ids
    refs = {}
    for v, a in ((v1, a1), (v2, a2)):
        hf.load_lora(v, str(a))
        refs[v] = hf.score(PROMPT, [_image(3)], probe_ids, v)
        hf.unload_lora(v)

    assert s.load_adapter(v1, pack(a1), Probe(PROMPT, [_image(3)], probe_ids, refs[v1]))
    req = Request(PROMPT2, [_image(4)], ["hit", "stand"], temperature=0.0, max_tokens=8)

    def check_served(version, adapter_ref_version):
        (c,) = s.generate([req])
        assert c.version == version
        hf.load_lora(adapter_ref_version, str(a1 if adapter_ref_version == v1 else a2))
        want = hf.score(req.messages, req.images, c.gen_ids, adapter_ref_version)
        hf.unload_lora(adapter_ref_version)
        np.testing.assert_allclose(c.logprobs, want, atol=1e-3)
        return c

    c1 = check_served(v1, v1)
    # a wrong reference (v1's log-probs shifted) for adapter 2: refused, v1 keeps serving
    wrong = [x + 0.05 for x in refs[v2]]
    assert not s.load_adapter(v_bad, pack(a2), Probe(PROMPT, [_image(3)], probe_ids, wrong))
    assert s.version == v1 and s.stats.sync_failures == 1
    check_served(v1, v1)
    assert s.load_adapter(v2, pack(a2), Probe(PROMPT, [_image(3)], probe_ids, refs[v2]))
    c2 = check_served(v2, v2)
    assert c2.logprobs != c1.logprobs
    # an episode that started on v1 finishes on v1
    (old,) = s.generate([req], version=v1)
    assert old.version == v1 and old.gen_ids == c1.gen_ids
    for v in s.stats.resident[1:]:
        vllm_backend.unload_lora(v)


def test_sampler_actor_micro_batches_concurrent_callers(ray_local):
    cfg = SamplerConfig(backend="scripted", policy="expert", batch_wait_s=0.05)
    sampler = Sampler.remote(cfg, ModelConfig(path="/nonexistent"))
    reqs = [Request(PROMPT, [], ["+", "-"], expert_action="-")] * 3
    out: list = []
    threads = [
        threading.Thread(target=lambda: out.append(ray.get(sampler.generate.remote(reqs)))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 6 and all(c.text == '{"action": "-"}' and c.version == -1 for o in out for c in o)
    st = ray.get(sampler.stats.remote())
    assert st["requests"] == 18 and st["batches"] < 6  # several callers served by one backend call
    assert ray.get(sampler.generate.remote([])) == []


def test_a_sampler_without_gpus_takes_sampler_num_cpus_as_its_threads(ray_local, tmp_path):
    """On a CPU-only cluster each sampler reserves `sampler.num_cpus` CPUs, and its process is told to
    run as many threads (OMP_NUM_THREADS, which vLLM-CPU's binding and torch read)."""
    import os

    from actors.placement import start_samplers
    from vlmq.config import RunConfig

    cfg = RunConfig()
    cfg.model.path = "/nonexistent"
    cfg.sampler.backend, cfg.sampler.num_cpus = "scripted", 2
    (sampler,) = start_samplers(cfg, tmp_path)
    assert ray.get(sampler.__ray_call__.remote(lambda self: os.environ["OMP_NUM_THREADS"])) == "2"
    ray.kill(sampler)


def test_a_fresh_sampler_actor_ignores_an_old_runs_state(ray_local, tmp_path):
    from actors.scripted_backend import ScriptedBackend

    cfg = SamplerConfig(backend="scripted")
    old = VersionedSampler(ScriptedBackend(), cfg, state_dir=tmp_path)
    assert old.load_adapter(7, pack(_adapter(tmp_path, 3))) and (tmp_path / "newest.json").exists()
    # a new job's sampler starts at the base model; only a Ray restart of the same actor restores
    fresh = Sampler.remote(cfg, ModelConfig(path="/nonexistent"), str(tmp_path), 0, ScriptedBackend())
    assert ray.get(fresh.version.remote()) == 0 and not ray.get(fresh.stats.remote())["restarted"]
