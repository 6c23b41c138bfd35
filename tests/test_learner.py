"""The learner on the tiny VLM: batch building, an update, checkpoint/resume, export, data parallel."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from learner.batch import build_batch
from learner.losses import advantage_unit, td_targets, values
from learner.processing import load_processor
from vlmq.config import ConfigError, LearnerConfig, ModelConfig


def numberline_turns(n_episodes: int, seed: int = 0, obs_mode: str = "both") -> list:
    """Random-policy NumberLine turns, the shape the replay hands the learner (gen_ids None: text data)."""
    from actors.collect import play
    from vlmq.config import EnvConfig, RunConfig

    return play(RunConfig(env=EnvConfig(obs_mode=obs_mode)), range(seed, seed + n_episodes), seed)[0]


@pytest.fixture(scope="module")
def turns():
    return numberline_turns(12)


@pytest.fixture(scope="module")
def model_cfg(tiny_vlm_dir):
    return ModelConfig(path=str(tiny_vlm_dir))


def make_learner(model_cfg, **kw):
    from learner.trainer import Learner

    return Learner(model_cfg, LearnerConfig(**kw))


def test_batch_layout_by_hand(tiny_vlm_dir, turns):
    from learner.processing import encode_prompt

    proc = load_processor(str(tiny_vlm_dir))
    term = next(t for t in turns if t.terminated)
    trunc = next(t for t in turns if t.truncated)
    mid = next(t for t in turns if not (t.terminated or t.truncated))
    b = build_batch([mid, term, trunc], proc, LearnerConfig(gamma=0.5, reward_scale=2.0))
    tok = proc.tokenizer
    for row, t in enumerate([mid, term, trunc]):
        prompt = encode_prompt(proc, t.messages, t.images)["input_ids"]
        gen = tok(t.action_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(gen)
        assert b.actions[row, :n].tolist() == gen
        assert b.mask[row].tolist() == [1.0] * n + [0.0] * (b.mask.shape[1] - n)
        # the state for token k is the position whose logits predict it: the token before it
        assert b.seqs.input_ids[row, b.positions[row, :n] + 1].tolist() == gen
        assert b.seqs.input_ids[row, : len(prompt)].tolist() == prompt
        assert b.last[row].nonzero().flatten().tolist() == [n - 1]
        assert b.rewards[row, n - 1].item() == 2.0 * t.reward
        assert b.rewards[row].abs().sum().item() == abs(2.0 * t.reward)
    assert b.discounts[0].max().item() == 1.0 and b.discounts[0][b.last[0]].item() == 0.5
    assert b.discounts[1][b.last[1]].item() == 0.0  # termination: no bootstrap
    assert b.discounts[2][b.last[2]].item() == 0.5  # truncation: bootstraps
    assert b.next_rows.tolist() == [0, 2]
    last = b.next_prompts.last
    nxt = encode_prompt(proc, trunc.next_messages, trunc.next_images)["input_ids"]
    assert b.next_prompts.input_ids[1, : last[1] + 1].tolist() == nxt


def test_token_in_token_out_mismatch_is_a_clear_error(tiny_vlm_dir, turns):
    proc = load_processor(str(tiny_vlm_dir))
    t = dataclasses.replace(turns[0], prompt_ids=[1, 2, 3], gen_ids=[10, 11])
    with pytest.raises(
        ValueError, match=f"token-in/token-out violated for episode {turns[0].episode_id} turn 0"
    ):
        build_batch([t], proc, LearnerConfig())
    ok = dataclasses.replace(turns[0], prompt_ids=None, gen_ids=[10, 11])
    assert build_batch([ok], proc, LearnerConfig()).actions.tolist() == [[10, 11]]


@pytest.mark.slow
def test_update_trains_lora_and_critic_and_moves_targets(model_cfg, turns):
    learner = make_learner(model_cfg, tau=0.5, lr=1e-2, critic_lr=1e-2)
    before = learner.state_tensors()
    m = learner.step(turns[:16])
    after = learner.state_tensors()
    for key in ("actor_loss", "critic_loss", "filter_rate", "q", "v", "adv", "td_error", "grad_norm"):
        assert torch.isfinite(torch.tensor(m[key])), key
    assert 0.0 <= m["filter_rate"] <= learner.cfg.w_max  # mean w: above 1 is possible with the exp filter
    lora = [k for k in before if "lora_B" in k]
    assert lora and all("vision" not in k for k in before)  # LoRA on the language model only
    assert all(not torch.equal(before[k], after[k]) for k in lora)
    crit = [k for k in before if k.startswith("critics.")]
    for k in crit:  # target = (1 - tau) target + tau online, after the online step
        t = "targets." + k.removeprefix("critics.")
        assert torch.allclose(after[t], 0.5 * before[t] + 0.5 * after[k], atol=1e-7)
    frozen = [n for n, p in learner.model.named_parameters() if not p.requires_grad]
    assert any("vision_model" in n for n in frozen) and any("embed_tokens" in n for n in frozen)


@pytest.mark.slow
def test_sft_update_minimises_the_masked_cross_entropy_of_its_batch(model_cfg, turns):
    """filter=none: the actor loss of an update is -mean log pi(y) over the batch's generated tokens,
    as a forward pass of the model before the update gives it."""
    learner = make_learner(model_cfg, filter="none")
    b = build_batch(turns[:8], learner.processor, learner.cfg)
    logp = torch.log_softmax(_heads(learner, b)[0], -1).gather(-1, b.actions[..., None])[..., 0]
    m = learner.step(turns[:8])
    assert m["actor_loss"] == pytest.approx((-(logp * b.mask).sum() / b.mask.sum()).item(), rel=1e-5)


@pytest.mark.slow
def test_sft_warmup_is_sft_then_the_filter(model_cfg, turns):
    """sft_warmup_steps=1: the first update is exactly the SFT update, the second filters again."""
    warm = make_learner(model_cfg, filter="binary", sft_warmup_steps=1)
    sft = make_learner(model_cfg, filter="none")
    binary = make_learner(model_cfg, filter="binary")
    first = [learner.step(turns[:8]) for learner in (warm, sft, binary)]
    assert first[0] == first[1]
    assert first[2]["filter_rate"] < 1.0  # so the binary filter does drop tokens on this batch
    second = warm.step(turns[8:16])
    assert second["filter_rate"] < 1.0


def test_lr_factor_warms_up_then_decays_by_cosine_to_the_final_ratio():
    from learner.trainer import Learner, lr_factor

    cfg = LearnerConfig(warmup_steps=2, lr_decay_steps=4, lr_final_ratio=0.2)
    got = [lr_factor(cfg, s) for s in range(6)]
    cos = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]
    want = [0.5 * cos[0], cos[1], cos[2], cos[3], 0.2, 0.2]
    assert got == pytest.approx(want, abs=1e-12)
    assert lr_factor(LearnerConfig(), 10_000) == 1.0  # no warmup, no decay: constant
    with pytest.raises(ConfigError, match=r"learner.lr_final_ratio: -0.5 must be in \[0, 1\]"):
        Learner(ModelConfig(path="unused"), LearnerConfig(lr_final_ratio=-0.5))


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["folder", "fsspec URL"])
def test_resume_continues_exactly(model_cfg, turns, tmp_path, storage):
    """A checkpoint written to a folder, or to any fsspec URL (here the in-memory store, as an object
    store would be), resumes to the same bits."""
    batches = [turns[i * 8 : (i + 1) * 8] for i in range(4)]
    kw = dict(lr=1e-2, critic_lr=1e-2, warmup_steps=3, lr_decay_steps=4, tau=0.2, param_average=0.3)
    straight = make_learner(model_cfg, **kw)
    ref = [straight.step(b) for b in batches]
    first = make_learner(model_cfg, **kw)
    for b in batches[:2]:
        first.step(b)
    where = str(tmp_path / "ckpt") if storage == "folder" else f"memory://{tmp_path.name}/ckpt"
    first.save(where)
    resumed = make_learner(model_cfg, seed=123, **{k: v for k, v in kw.items() if k != "seed"})
    resumed.load(where)
    assert resumed.steps == 2
    got = [resumed.step(b) for b in batches[2:]]
    for a, b in zip(ref[2:], got):
        assert a == b  # every metric, bit for bit
    s, r = straight.state_tensors(), resumed.state_tensors()
    assert s.keys() == r.keys() and all(torch.equal(s[k], r[k]) for k in s)


def test_parameter_average_is_the_running_lerp_and_what_samplers_get(model_cfg, turns):
    """avg_k = (1 - r) avg_{k-1} + r theta_k from the init: after two updates at r = 0.5 it is
    theta_0 / 4 + theta_1 / 4 + theta_2 / 2. Inside `averaged()` the model holds it, and the exported
    policy's log-probs are its; training continues from the live weights."""
    learner = make_learner(model_cfg, lr=5e-2, critic_lr=5e-2, param_average=0.5)
    names = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    lora, head = next(n for n in names if "lora_B" in n), next(n for n in names if n.startswith("critics."))
    snap = lambda: {n: p.detach().clone() for n, p in learner.model.named_parameters() if n in (lora, head)}  # noqa: E731
    thetas = [snap()]
    for i in range(2):
        learner.step(turns[i * 8 : (i + 1) * 8])
        thetas.append(snap())
    for n in (lora, head):
        want = thetas[0][n] / 4 + thetas[1][n] / 4 + thetas[2][n] / 2
        assert torch.allclose(learner.average[n], want, atol=1e-7)
        assert not torch.allclose(learner.average[n], thetas[2][n])
    t = turns[3]
    gen = learner.processor.tokenizer(t.action_text, add_special_tokens=False)["input_ids"]
    served = learner.reference_logprobs(t.messages, t.images, gen)
    own = dict(learner.model.named_parameters())
    with learner.averaged():
        assert torch.equal(own[lora], learner.average[lora])
    assert torch.equal(own[lora], thetas[2][lora])  # the live weights are back
    live = dataclasses.replace(learner.cfg, param_average=0.0)
    learner.average, learner.cfg = {}, live  # the same model read without the average
    assert (
        max(abs(a - b) for a, b in zip(served, learner.reference_logprobs(t.messages, t.images, gen))) > 1e-4
    )


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_learners_logprobs(model_cfg, turns, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from learner.processing import encode_prompt
    from learner.weight_sync import unpack

    learner = make_learner(model_cfg, lr=5e-2)
    for i in range(2):
        learner.step(turns[i * 8 : (i + 1) * 8])
    folder = unpack(learner.adapter_bytes(), tmp_path / "shipped")
    t = turns[3]
    gen = learner.processor.tokenizer(t.action_text, add_special_tokens=False)["input_ids"]
    ours = learner.reference_logprobs(t.messages, t.images, gen)
    base = AutoModelForImageTextToText.from_pretrained(model_cfg.path, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(folder)).eval()
    enc = encode_prompt(learner.processor, t.messages, t.images)
    ids = torch.tensor([enc["input_ids"] + gen])
    with torch.no_grad():
        logits = plain(
            input_ids=ids, pixel_values=enc["pixel_values"], pixel_attention_mask=enc["pixel_attention_mask"]
        ).logits
    start = len(enc["input_ids"]) - 1
    theirs = torch.log_softmax(logits[0, start:-1].float(), -1).gather(-1, torch.tensor(gen)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(ours), theirs, atol=1e-5)
    untrained = make_learner(model_cfg).reference_logprobs(t.messages, t.images, gen)
    assert max(abs(a - b) for a, b in zip(ours, untrained)) > 1e-3  # the adapter changed the policy


def test_unpack_refuses_foreign_members(tmp_path):
    import io
    import tarfile

    from learner.weight_sync import unpack

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../evil.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="unexpected member '../evil.json'"):
        unpack(buf.getvalue(), tmp_path)


def _critic_after_updates(model_cfg, turns, **kw):
    """A learner whose LoRA and heads have moved (two updates), so values differ across states."""
    learner = make_learner(model_cfg, lr=1e-2, critic_lr=5e-2, tau=0.5, **kw)
    for s in (slice(0, 16), slice(16, 32)):
        learner.step(turns[s])
    return learner


def _heads(learner, batch):
    with torch.no_grad():
        s = batch.seqs
        return learner.model(s.input_ids, s.attention_mask, s.images, batch.positions)


@pytest.mark.parametrize("value", ["expectile", "policy"])
def test_next_value_is_v_target_at_the_next_turns_first_generated_position(model_cfg, turns, value):
    """Turns t and t+1 of one episode in one batch: next_v of turn t is V_target at the state that
    predicts turn t+1's first token, as the forward pass over turn t+1's own row computes it."""
    learner = _critic_after_updates(model_cfg, turns, value=value)
    i = next(i for i in range(len(turns) - 1) if not turns[i].terminated and not turns[i].truncated)
    t, t1 = turns[i], turns[i + 1]
    assert (t1.episode_id, t1.turn_index) == (t.episode_id, t.turn_index + 1)
    b = build_batch([t, t1], learner.processor, learner.cfg)
    next_v = learner.next_values(b)
    logits, _, q_target, v_head = _heads(learner, b)
    v_first = values(logits, q_target, v_head, learner.cfg)[1, 0].item()
    assert next_v[0].item() == pytest.approx(v_first, abs=1e-5)
    init = learner.cfg.reward_range[0] / (1 - learner.cfg.gamma) if value == "policy" else 0.0
    assert abs(v_first - init) > 1e-3  # trained, not the initial value


def test_truncated_turn_bootstraps_and_terminated_does_not(model_cfg, turns):
    """The targets of the learner's own update: y = r + gamma V_target(next prompt) on every token of a
    truncated turn (td_lambda 1), y = r on a terminated one; the update's critic loss is theirs."""
    learner = _critic_after_updates(model_cfg, turns)
    trunc = next(t for t in turns if t.truncated)
    term = next(t for t in turns if t.terminated)
    b = build_batch([trunc, term], learner.processor, learner.cfg)
    next_v = learner.next_values(b)
    assert next_v[1].item() == 0.0 and next_v[0].item() != 0.0
    logits, q, q_target, v_head = _heads(learner, b)
    y = td_targets(
        values(logits, q_target, v_head, learner.cfg), b.rewards, b.discounts, b.last, next_v, lam=1.0
    )
    n0, n1 = int(b.mask[0].sum()), int(b.mask[1].sum())
    assert y[0, :n0].tolist() == pytest.approx([trunc.reward + 0.9 * next_v[0].item()] * n0, abs=1e-5)
    assert y[1, :n1].tolist() == pytest.approx([term.reward] * n1, abs=1e-6)
    q_sa = q.gather(-1, b.actions[None, ..., None].expand(q.shape[0], -1, -1, 1)).squeeze(-1)
    expected = ((((q_sa - y) / advantage_unit(learner.cfg)) ** 2).mean(0) * b.mask).sum() / b.mask.sum()
    m = learner.step([trunc, term])
    assert m["critic_loss"] == pytest.approx(expected.item(), rel=1e-5) and m["value_loss"] > 0


def test_heads_and_values_stay_float32_under_autocast(model_cfg, turns):
    """Inside a bf16 autocast region (as on CUDA) Q, V and the logits are computed in float32."""
    learner = _critic_after_updates(model_cfg, turns)
    h = torch.randn(2, 3, learner.model.lm_head.in_features)
    plain = learner.model.heads(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = learner.model.heads(h)
        assert torch.nn.Linear(4, 4)(torch.randn(1, 4)).dtype == torch.bfloat16  # autocast is on
    for a, b in zip(plain, under):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_bf16_always_autocasts_the_backbone_on_cpu(model_cfg, turns):
    """bf16="always" runs the step's backbone in bf16 on CPU too: from the same init on the same batch
    the loss moves off float32's by bf16 rounding (not 0, within a few percent); "cuda" is float32 here."""
    losses = {}
    for mode in ("cuda", "always"):
        learner = make_learner(model_cfg, bf16=mode)
        losses[mode] = learner.step(turns[:8])["loss"]
    assert losses["always"] != losses["cuda"]
    assert losses["always"] == pytest.approx(losses["cuda"], rel=0.05)
