"""The dual-head VLM: a Hugging Face backbone with LoRA on its language model, the LM head (the policy),
C critic heads `Linear(hidden, vocab)` on the same final hidden state, their EMA target copies, and a
value head `Linear(hidden, 1)` (used when `learner.value` is "expectile").

Only the hidden states at the positions that predict generated tokens go through the heads, so a long
prompt full of image tokens costs one backbone pass and nothing more.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from learner.processing import token_types
from vlmq.config import ModelConfig, validate_model

# Module-name fragments of vision towers and projectors across HF VLMs (Idefics3/SmolVLM, Qwen2-VL,
# LLaVA, PaliGemma); LoRA stays out of them unless freeze_vision is off.
VISION_MODULES = r".*(vision_model|visual|vision_tower|vision_encoder|connector|multi_modal_projector).*"


def load_backbone(path: str, text_only: bool = False, dtype: str = "float32"):
    """The base model (image-text-to-text, or a causal LM in text mode), always causal, as the vLLM
    backend serves it: transformers' PaliGemma otherwise attends both ways over the whole sequence
    when it is given no token_type_ids, and a position would see the tokens after it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    config.get_text_config().use_bidirectional_attention = False
    auto = AutoModelForCausalLM if text_only else AutoModelForImageTextToText
    return auto.from_pretrained(path, config=config, dtype=getattr(torch, dtype))


def lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        exclude_modules=VISION_MODULES if cfg.freeze_vision and not cfg.text_only else None,
        bias="none",
    )


class DualHeadModel(nn.Module):
    """backbone + LoRA (peft) + critic heads + target heads + value head. `forward` returns
    token-aligned tensors."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, q_init: float = 0.0):
        super().__init__()
        from peft import get_peft_model

        validate_model(cfg)
        self.cfg = cfg
        torch.manual_seed(seed)  # LoRA B is zero; A and the critic heads are drawn from this seed
        self.peft = get_peft_model(load_backbone(cfg.path, cfg.text_only, cfg.dtype), lora_config(cfg))
        hf = self.peft.get_base_model()
        hidden = hf.get_output_embeddings().in_features
        vocab = hf.get_output_embeddings().out_features
        self.critics = nn.ModuleList(nn.Linear(hidden, vocab) for _ in range(cfg.num_critics))
        for head in self.critics:  # Q starts flat at q_init (the learner's q_floor)
            nn.init.normal_(head.weight, std=0.02 / hidden**0.5)
            nn.init.constant_(head.bias, q_init)
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.value = nn.Linear(hidden, 1)
        nn.init.normal_(self.value.weight, std=0.02 / hidden**0.5)
        nn.init.constant_(self.value.bias, q_init)

    @property
    def lm_head(self) -> nn.Module:
        return self.peft.get_base_model().get_output_embeddings()

    def hidden_states(self, input_ids, attention_mask, images: dict) -> torch.Tensor:
        """Final (normed) hidden states of the language model, (B, L, H); LoRA active."""
        inner = self.peft.get_base_model().model  # XForConditionalGeneration.model / XForCausalLM.model
        types = token_types(inner.config, input_ids)
        out = inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **images, **types)
        return out.last_hidden_state

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Policy logits (B, K, V), online Q (C, B, K, V), target Q (C, B, K, V, no grad) and the value
        head (B, K) at states h, all in float32 even inside an autocast region (bf16 would round
        returns to 3 significant digits)."""
        with torch.autocast(h.device.type, enabled=False):
            hf = h.float()
            logits = self.lm_head(h.to(self.lm_head.weight.dtype)).float()
            q = torch.stack([c(hf) for c in self.critics])
            with torch.no_grad():
                q_target = torch.stack([c(hf.detach()) for c in self.targets])
            v = self.value(hf).squeeze(-1)
        return logits, q, q_target, v

    def forward(self, input_ids, attention_mask, images: dict, positions: torch.Tensor):
        """Heads at `positions` (B, K): the positions whose logits predict the generated tokens."""
        h = self.hidden_states(input_ids, attention_mask, images)
        h = h.gather(1, positions[..., None].expand(-1, -1, h.shape[-1]))
        return self.heads(h)

    @torch.no_grad()
    def heads_at(
        self, input_ids, attention_mask, images: dict, positions: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """`heads` at one position per row (B,), e.g. the last prompt token of each next turn; no grad."""
        h = self.hidden_states(input_ids, attention_mask, images)
        return self.heads(h[torch.arange(h.shape[0], device=h.device), positions][:, None])

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """Polyak: target <- (1 - tau) target + tau online."""
        for t, o in zip(self.targets.parameters(), self.critics.parameters()):
            t.lerp_(o, tau)
