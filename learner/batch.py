"""Turns -> padded token tensors for the losses (docs/design.md, section 1.1).

A row is one turn: its prompt encoded by the model's own processor (`encode_prompt`), then the exact
token ids the sampler generated. The state for generated token k (0-based) sits at position
len(prompt) - 1 + k, whose logits predict it. Rows are right-padded; padding has mask 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import torch

from learner.processing import encode_prompt, text_to_gen_ids
from vlmq.config import LearnerConfig


def last_token_discount(terminated: bool, truncated: bool, gamma: float) -> float:
    """gamma to the next prompt; 0 on true termination. A time-limit truncation bootstraps."""
    del truncated  # deliberately unused: truncation is not termination
    return 0.0 if terminated else gamma


@dataclass
class Prompts:
    """Right-padded prompts with their image tensors, and the position of each row's last prompt token."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    last: torch.Tensor | None = None  # (B,) index of the last real token

    def to(self, device) -> Prompts:
        return Prompts(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.images.items()},
            self.last.to(device),
        )


@dataclass
class Batch:
    seqs: Prompts  # prompt + generated tokens of every turn
    positions: torch.Tensor  # (B, K) state positions s_{t,k} in seqs
    actions: torch.Tensor  # (B, K) generated token ids
    mask: torch.Tensor  # (B, K) 1 on generated tokens
    last: torch.Tensor  # (B, K) True on the last generated token
    rewards: torch.Tensor  # (B, K) r_t * reward_scale on the last token
    discounts: torch.Tensor  # (B, K) gamma (1 - done) on the last token, 1 elsewhere
    next_prompts: Prompts | None  # the next turns' prompts, for rows in next_rows
    next_rows: torch.Tensor  # (B',) rows of this batch that bootstrap (not terminated)

    def to(self, device) -> Batch:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if v is not None:
                out[k] = v.to(device)
        return Batch(**out)


def _collate(encoded: list[dict], pad_id: int) -> Prompts:
    """Right-pad `input_ids`; concatenate image tensors on dim 0 (batch dim for Idefics3/LLaVA,
    patch dim for Qwen2-VL, both what the model's forward expects)."""
    lens = [len(e["input_ids"]) for e in encoded]
    ids = torch.full((len(encoded), max(lens)), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : lens[i]] = torch.tensor(e["input_ids"])
        att[i, : lens[i]] = 1
    keys = {k for e in encoded for k in e if k != "input_ids"}
    images = {}
    for k in sorted(keys):
        if any(k not in e for e in encoded):
            raise ValueError(f"cannot batch prompts with and without {k!r} (images in some prompts only)")
        try:
            images[k] = torch.cat([torch.as_tensor(e[k]) for e in encoded])
        except RuntimeError as err:
            raise ValueError(f"cannot batch {k!r}: shapes differ across prompts ({err})") from None
    return Prompts(ids, att, images, torch.tensor(lens) - 1)


class PromptCache:
    """encode_prompt results by (messages, image hashes). Prompts recur a lot (a turn's next prompt is the
    following turn's prompt; small games revisit states; replay resamples), and the image processor
    costs more than the model's forward on small models. Bounded, oldest out first."""

    def __init__(self, max_items: int = 8192):
        self.max_items, self.items = max_items, {}

    def encode(self, processor, messages: list, images: list, hashes: list | None = None) -> dict:
        from replay.turn import image_hash

        images = list(images or [])
        hashes = list(hashes) if hashes and len(hashes) == len(images) else [image_hash(i) for i in images]
        key = (json.dumps(messages, sort_keys=True), tuple(hashes))
        if key not in self.items:
            if len(self.items) >= self.max_items:
                self.items.pop(next(iter(self.items)))
            self.items[key] = encode_prompt(processor, messages, images)
        return self.items[key]


def _encode(processor, messages, images, hashes, cache: PromptCache | None) -> dict:
    if cache is None:
        return encode_prompt(processor, messages, list(images or []))
    return cache.encode(processor, messages, images, hashes)


def encode_turn_prompt(processor, turn, cache: PromptCache | None = None) -> dict:
    """encode_prompt, checked against the ids the sampler stored (token-in, token-out)."""
    enc = _encode(processor, turn.messages, turn.images, turn.image_hashes, cache)
    stored = getattr(turn, "prompt_ids", None)
    if stored is not None and list(stored) != enc["input_ids"]:
        ids = enc["input_ids"]
        i = next((j for j, (a, b) in enumerate(zip(stored, ids)) if a != b), min(len(stored), len(ids)))
        raise ValueError(
            f"token-in/token-out violated for episode {turn.episode_id} turn {turn.turn_index}: the processor "
            f"encodes the prompt to {len(ids)} ids but the sampler stored {len(stored)}; first difference at "
            f"index {i} (processor {ids[i : i + 5]} vs stored {list(stored[i : i + 5])}). The sampler and the "
            f"learner must use the same model path, processor and chat template."
        )
    return enc


def build_batch(turns: list, processor, cfg: LearnerConfig, cache: PromptCache | None = None) -> Batch:
    """Token tensors, masks, rewards, discounts and the next prompts of a list of `replay.turn.Turn`."""
    if not turns:
        raise ValueError("build_batch needs at least one turn")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, nexts, next_rows, gens = [], [], [], []
    for b, t in enumerate(turns):
        gen = list(t.gen_ids) if t.gen_ids is not None else text_to_gen_ids(tokenizer, t.action_text)
        gens.append(gen)
        if not gen:
            raise ValueError(
                f"episode {t.episode_id} turn {t.turn_index}: empty gen_ids (nothing to learn from)"
            )
        enc = encode_turn_prompt(processor, t, cache)
        seqs.append({**enc, "input_ids": enc["input_ids"] + gen, "prompt_len": len(enc["input_ids"])})
        if not t.terminated:
            if not t.next_messages:
                raise ValueError(
                    f"episode {t.episode_id} turn {t.turn_index} is not terminated but has no next prompt to bootstrap from"
                )
            nexts.append(_encode(processor, t.next_messages, t.next_images, t.next_image_hashes, cache))
            next_rows.append(b)

    prompt_lens = [s.pop("prompt_len") for s in seqs]
    gen_lens = [len(g) for g in gens]
    B, K = len(turns), max(gen_lens)
    k = torch.arange(K)
    mask = (k[None, :] < torch.tensor(gen_lens)[:, None]).float()
    positions = (torch.tensor(prompt_lens)[:, None] - 1 + k[None, :]) * mask.long()
    actions = torch.zeros(B, K, dtype=torch.long)
    last = torch.zeros(B, K, dtype=torch.bool)
    rewards = torch.zeros(B, K)
    discounts = torch.ones(B, K)
    for b, t in enumerate(turns):
        n = gen_lens[b]
        actions[b, :n] = torch.tensor(gens[b])
        last[b, n - 1] = True
        rewards[b, n - 1] = float(t.reward) * cfg.reward_scale
        discounts[b, n - 1] = last_token_discount(bool(t.terminated), bool(t.truncated), cfg.gamma)
    return Batch(
        seqs=_collate(seqs, pad_id),
        positions=positions,
        actions=actions,
        mask=mask,
        last=last,
        rewards=rewards,
        discounts=discounts,
        next_prompts=_collate(nexts, pad_id) if nexts else None,
        next_rows=torch.tensor(next_rows, dtype=torch.long),
    )
