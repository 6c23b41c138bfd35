"""What a sampler backend takes and returns; vLLM, transformers and scripted backends all keep it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Request:
    """One prompt to complete. `images` are uint8 (H, W, 3) arrays in `{"type": "image"}` order."""

    messages: list[dict]
    images: list[np.ndarray]
    legal_actions: list[str]
    expert_action: str | None = None  # for scripted backends (expert / epsilon policies)
    temperature: float = 1.0  # 0 is greedy
    max_tokens: int = 32


@dataclass
class Completion:
    """The sampled tokens, their text, their log-probs under the policy that sampled them, and that policy."""

    gen_ids: list[int]
    text: str
    logprobs: list[float]  # one per gen id, at temperature 1 (the policy's own distribution)
    prompt_ids: list[int]
    version: int  # the LoRA version that produced it; 0 is the base model


class Backend(Protocol):
    def generate(self, requests: list[Request], version: int) -> list[Completion]: ...

    def load_lora(self, version: int, path: str) -> None: ...

    def unload_lora(self, version: int) -> None: ...

    def score(
        self, messages: list[dict], images: list[np.ndarray], gen_ids: list[int], version: int
    ) -> list[float]:
        """Log-probs of the continuation `gen_ids` after the prompt, under `version` (0: base model)."""
        ...
