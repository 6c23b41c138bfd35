"""Scripted backend: the envs' data-collection policies behind the sampler interface, no model needed.

Used for datasets (random, expert, epsilon-mix, malformed outputs) and for benchmarking the actor
pipeline without inference cost. The output text is what `envs.policies` writes with the common
`envs.format_action` syntax. Token ids: with `tokenizer_path` (the model folder) the text is
tokenized (plus EOS) so the turns are trainable token-in, token-out; without one `gen_ids` is empty
(the replay stores None and the learner tokenizes the text). `prompt_ids` and `logprobs` are always
empty (no model saw the prompt; a scripted policy has no behaviour log-probs) and `version` is -1,
the replay's mark for "no model".
"""

from __future__ import annotations

import numpy as np

from actors.protocol import Completion, Request
from envs import format_action
from envs.policies import make_policy
from learner.processing import text_to_gen_ids

SCRIPTED_VERSION = -1


class ScriptedBackend:
    def __init__(self, policy: str = "random", tokenizer_path: str | None = None, seed: int | list[int] = 0):
        self.policy = make_policy(policy)
        self.rng = np.random.default_rng(seed)
        self.tokenizer = None
        if tokenizer_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"tokenizer at {tokenizer_path} has no EOS token")

    def generate(self, requests: list[Request], version: int) -> list[Completion]:
        out = []
        for i, r in enumerate(requests):
            if not r.legal_actions:
                raise ValueError(f"request {i}: the scripted backend needs legal_actions")
            # the state a habit is fixed to: the prompt's words (with history, the episode so far)
            state = "\n".join(p["text"] for m in r.messages for p in m["content"] if p.get("type") == "text")
            text = self.policy.act(r.legal_actions, r.expert_action, self.rng, format_action, state=state)
            ids: list[int] = []
            if self.tokenizer is not None:
                ids = text_to_gen_ids(self.tokenizer, text, r.max_tokens)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)  # as if cut at max_tokens
            out.append(
                Completion(gen_ids=ids, text=text, logprobs=[], prompt_ids=[], version=SCRIPTED_VERSION)
            )
        return out

    def load_lora(self, version: int, path: str) -> None:
        """Adapters change nothing here; accepted so the versioning logic runs unchanged."""

    def unload_lora(self, version: int) -> None:
        pass

    def score(self, messages: list[dict], images: list, gen_ids: list[int], version: int) -> list[float]:
        raise NotImplementedError(
            "the scripted backend has no model to score with; push adapters without a probe"
        )
