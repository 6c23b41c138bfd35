"""Text <-> token ids, the one place: prompts (`encode_prompt`), actions (`text_to_gen_ids`) and the
special tokens a policy may never emit (`suppressed_ids`).

The hf sampler, the vLLM backend, the env runner, the scripted backend and the learner's batch builder
all call these, so the ids a sampler generated from are exactly the ids the learner trains on
(token-in, token-out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from replay.turn import count_placeholders

# Processor outputs with one entry per token, dropped by `encode_prompt`: they are functions of the
# ids, so `token_types` rebuilds those a model needs for whatever sequence it runs on (prompt plus
# generation, padded). PaliGemma's `token_type_ids` is not rebuilt: it would make the prompt attend
# both ways, and every model runs causal (learner.model.load_backbone).
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def token_types(config, input_ids):
    """The per-token inputs a model's forward needs: Qwen2-VL's and Qwen2.5-VL's M-RoPE finds images
    by `mm_token_type_ids` (1 image, 2 video); other models need none."""
    if getattr(config, "vision_start_token_id", None) is None:  # the Qwen-VL families' marker
        return {}
    types = (input_ids == config.image_token_id).int() + 2 * (input_ids == config.video_token_id).int()
    return {"mm_token_type_ids": types}


def load_processor(model_path: str, text_only: bool = False):
    """The model's processor (tokenizer + image processor + chat template), or only its tokenizer."""
    if text_only:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path)


def to_pil(images: list[np.ndarray]) -> list[Image.Image]:
    """uint8 (H, W, 3) arrays to RGB PIL images, the form both transformers and vLLM accept."""
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {i}: expected a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
        out.append(Image.fromarray(arr, mode="RGB"))
    return out


def text_to_gen_ids(tokenizer, text: str, max_tokens: int = 0) -> list[int]:
    """An action's text as the model would have generated it, ending in EOS; with `max_tokens`, cut
    to that many ids as a sampler's length limit would (EOS kept last)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (ids[: max_tokens - 1] if max_tokens > 0 else ids) + [tokenizer.eos_token_id]


def reply_prefix_ids(processor) -> list[int]:
    """The ids a model's processor puts between the chat text and the reply, which a scorer given
    the prompt and the reply as one text must put back: PaliGemma's processor (and vLLM's) end every
    prompt with images in "\n"; other models none."""
    if type(processor).__name__ != "PaliGemmaProcessor":
        return []
    return processor.tokenizer("\n", add_special_tokens=False)["input_ids"]


def suppressed_ids(tokenizer, eos_id: int) -> list[int]:
    """Special tokens other than EOS, which samplers never emit: an image placeholder in an output
    would break every later forward pass over that turn (a random model samples them readily)."""
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return sorted((special | set(tokenizer.all_special_ids)) - {eos_id})


def chat_text(processor, messages: list[dict]) -> str:
    """The prompt as text: the chat template with the assistant's generation prompt appended.

    A text-only model's processor is its tokenizer, and a pretrained LM's template (SmolLM2's ChatML)
    takes a message's content as one string, so the envs' text parts are joined for it; a model that
    reads no images is never given one."""
    if not hasattr(processor, "tokenizer"):
        messages = [{**m, "content": _text_content(m["content"])} for m in messages]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _text_content(content: str | list[dict]) -> str:
    if isinstance(content, str):
        return content
    if any(part.get("type") != "text" for part in content):
        raise ValueError("a text-only model got a message with an image part; use env.obs_mode=text")
    return "".join(part["text"] for part in content)


def encode_prompt(processor, messages: list[dict], images: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Chat template with a generation prompt, then tokens: `input_ids` (list[int]) plus image tensors.

    `processor` is what `load_processor` returned: a multimodal processor, or a tokenizer (text mode).
    Image tensors (`pixel_values`, `pixel_attention_mask`, ...) are torch tensors with a batch dim of 1.
    """
    images = list(images or [])
    n = count_placeholders(messages)
    if n != len(images):
        raise ValueError(f"the messages have {n} image placeholders but {len(images)} images were given")
    text = chat_text(processor, messages)
    tokenizer = getattr(processor, "tokenizer", processor)
    if not images:
        return {"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
    if tokenizer is processor:
        raise ValueError("the prompt has images but the processor is text-only (a tokenizer)")
    enc = processor(text=[text], images=[to_pil(images)], add_special_tokens=False, return_tensors="pt")
    drop = ("input_ids", "attention_mask", "labels", *PER_TOKEN_KEYS)  # labels: PaliGemma's, unused
    out: dict[str, Any] = {k: v for k, v in enc.items() if k not in drop}
    out["input_ids"] = enc["input_ids"][0].tolist()
    return out
