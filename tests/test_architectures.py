"""Every tiny architecture through the loop: build, a learner step, the adapter it exports, vLLM-CPU
serving that adapter with the learner's log-probs, and token-in/token-out.

One vLLM engine per architecture (about 40 s each, marked slow). Tolerances are float32's: both sides
run the same causal model in float32, so the log-probs agree to ~1e-5 for every architecture
(PaliGemma included: `learner.model.load_backbone` loads it causal, as vLLM serves it).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learner.batch import build_batch
from learner.model import VISION_MODULES
from learner.processing import encode_prompt
from vlmq.config import LearnerConfig, ModelConfig
from vlmq.tiny_model import ARCHS, build_tiny_model

TOL = 1e-4


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    """(arch, model folder, turns in the obs mode it reads)."""
    from tests.test_learner import numberline_turns

    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return request.param, path, numberline_turns(4, obs_mode="text" if request.param == "text" else "both")


def _learner(arch):
    from learner.trainer import Learner

    name, path, _ = arch
    return Learner(
        ModelConfig(path=str(path), text_only=name == "text"), LearnerConfig(lr=5e-2, batch_size=8)
    )


def test_build_is_byte_identical_for_a_seed(arch, tmp_path):
    name, path, _ = arch
    again = build_tiny_model(tmp_path / "again", arch=name)
    files = sorted(p.name for p in path.iterdir())
    assert files == sorted(p.name for p in again.iterdir()) and "model.safetensors" in files
    assert all((path / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_learner_step_trains_lora_on_the_language_model_only(arch):
    import re

    name, _, turns = arch
    learner = _learner(arch)
    lora = {n: p.detach().clone() for n, p in learner.model.peft.named_parameters() if "lora_B" in n}
    assert lora and not any(re.fullmatch(VISION_MODULES, n) for n in lora)
    metrics = learner.step(turns[:8])
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    moved = [n for n, p in learner.model.peft.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert moved, f"{name}: no LoRA weight moved"
    # the critic head reads the hidden state the LM head reads: the policy logits come from it exactly
    t = turns[0]
    enc = encode_prompt(learner.processor, t.messages, t.images)
    ids = torch.tensor([enc["input_ids"]])
    images = {k: torch.as_tensor(v) for k, v in enc.items() if k != "input_ids"}
    with torch.no_grad():
        h = learner.model.hidden_states(ids, torch.ones_like(ids), images)
        full = learner.model.peft(input_ids=ids, **images, **_types(learner, ids)).logits
    assert torch.allclose(learner.model.lm_head(h), full, atol=1e-5)


def _types(learner, ids):
    from learner.processing import token_types

    return token_types(learner.model.peft.get_base_model().config, ids)


def test_hf_sampler_generates_in_a_padded_batch_what_it_scores_and_the_learner_reads(arch):
    from actors.hf_backend import HFBackend
    from actors.protocol import Request

    name, path, turns = arch
    backend = HFBackend(str(path), text_only=name == "text")
    learner = _learner(arch)
    done = backend.generate([Request(t.messages, t.images, [], max_tokens=6) for t in turns[:3]], version=0)
    for t, c in zip(turns, done):
        assert c.prompt_ids == encode_prompt(learner.processor, t.messages, t.images)["input_ids"]
        scored = backend.score(t.messages, t.images, c.gen_ids, 0)
        ours = learner.reference_logprobs(t.messages, t.images, c.gen_ids)
        assert len(c.logprobs) == len(scored) == len(ours) == len(c.gen_ids)
        assert max(abs(a - b) for a, b in zip(c.logprobs, scored)) <= TOL, name
        assert max(abs(a - b) for a, b in zip(scored, ours)) <= TOL, name


@pytest.mark.slow
def test_vllm_serves_the_exported_adapter_with_the_learners_logprobs(arch, tmp_path):
    from actors.protocol import Request
    from actors.vllm_backend import VLLMBackend
    from learner.weight_sync import unpack

    name, path, turns = arch
    learner = _learner(arch)
    learner.step(turns[:8])
    folder = unpack(learner.adapter_bytes(), tmp_path / "adapter")
    backend = VLLMBackend(str(path), max_loras=1, max_lora_rank=16, text_only=name == "text")
    try:
        t = turns[1]
        (c,) = backend.generate([Request(t.messages, t.images, [], max_tokens=8, temperature=0.0)], version=0)
        # token-in/token-out: the learner's batch takes the sampler's prompt ids as its own
        sampled = dataclasses.replace(t, prompt_ids=c.prompt_ids, gen_ids=c.gen_ids)
        batch = build_batch([sampled], learner.processor, learner.cfg)
        assert batch.actions[0].tolist() == c.gen_ids
        backend.load_lora(1, str(folder))
        served = backend.score(t.messages, t.images, c.gen_ids, 1)
        ours = learner.reference_logprobs(t.messages, t.images, c.gen_ids)
        assert len(served) == len(ours) == len(c.gen_ids)
        assert max(abs(a - b) for a, b in zip(served, ours)) <= TOL, name
        assert max(abs(a - b) for a, b in zip(served, c.logprobs)) > 1e-3, (
            f"{name}: the adapter changed nothing"
        )
    finally:
        backend.shutdown()


def test_torchvision_imports_in_a_fresh_interpreter():
    """The Qwen processors need torchvision; on CPU setups PyPI's CUDA build imports through
    deploy/torchvision_cpu_guard.py, which `make setup` installs (docs/models.md)."""
    import subprocess
    import sys

    code = "import torchvision.transforms.v2.functional as F, torch; print(F.resize(torch.zeros(3, 8, 8), [4, 4]).shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "[3, 4, 4]" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
def test_vlmq_train_runs_end_to_end(arch, ray_local, tmp_path):
    """The whole loop through the driver on each architecture, by path: its own dataset, offline and
    online updates, adapters pushed to the (hf) sampler, greedy evaluation."""
    import json
    from pathlib import Path

    from vlmq.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "numberline.yaml"
    name, path, _ = arch
    text = name == "text"
    main(
        ["train", "--config", str(config), f"out_dir={tmp_path}", "name=run",
         f"model.path={path}", "model.build_tiny=false", f"model.text_only={str(text).lower()}",
         f"env.obs_mode={'text' if text else 'both'}", "data.episodes=4", "learner.batch_size=4",
         "learner.offline_steps=2", "learner.online_steps=1", "learner.lr_decay_steps=0",
         "learner.sft_warmup_steps=1", "learner.checkpoint_every=2", "learner.publish_every=1",
         "sampler.backend=hf", "runner.envs_per_runner=2", "eval.episodes=2"]
    )  # fmt: skip
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["updates"] == 3 and results["lora_versions"] >= 2, name
