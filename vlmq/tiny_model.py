"""Build a tiny random-initialised VLM offline, in seconds, for the demo, the tests and the benchmarks.

Machines here have no model hub, so the project makes its own model: a byte-level BPE tokenizer
trained on the environments' own prompts and outputs, a chat template with image placeholders, and
an Idefics3 (SmolVLM) model with a tiny SigLIP vision tower and a tiny Llama language model. Idefics3
and not Qwen2-VL because Qwen2-VL's image processor needs torchvision (a CUDA build that breaks
imports on these CPU machines), while Idefics3's PIL processor needs only numpy and Pillow; both
transformers and vLLM load it. `arch="text"` builds a tiny Llama causal LM with the same tokenizer.

Everything is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Special tokens: chat roles, end of turn (the EOS), pad, and the three image tokens the Idefics3
# processor writes around each image's features (no image splitting, so no <row_i_col_j> tokens).
PAD, BOS, TURN, EOS = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>"
FAKE_IMAGE, IMAGE, GLOBAL_IMAGE = "<fake_token_around_image>", "<image>", "<global-img>"
SPECIAL_TOKENS = [PAD, BOS, TURN, EOS, FAKE_IMAGE, IMAGE, GLOBAL_IMAGE]

VOCAB_SIZE = 1024  # an upper bound (the env corpus gives ~800): small so the critic head is cheap
IMAGE_SIZE = 64  # env images (300x300) are resized to this square: one patch grid, no splitting
PATCH_SIZE = 8
SCALE_FACTOR = 2  # Idefics3 pixel shuffle: (64/8)^2 / 2^2 = 16 image tokens per image
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2


def chat_template(end_of_turn: str, system: str = "") -> str:
    """ChatML with image parts: `{"type": "image"}` content entries become <image>, which the Idefics3
    processor expands to the image's tokens; `system`, if given, is the default first turn."""
    default = (
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        f"{{{{ '<|im_start|>system\n{system}{end_of_turn}\n' }}}}"
        "{% endif %}"
    )
    return (
        "{% for message in messages %}"
        + (default if system else "")
        + "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '<image>' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        f"{{{{ '{end_of_turn}\n' }}}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template(EOS)


def idefics3_processor(tokenizer, template: str):
    """The Idefics3 processor for one IMAGE_SIZE square per image, no splitting: IMAGE_SEQ_LEN tokens."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=template,
    )


def _train_tokenizer():
    """A byte-level BPE over the env vocabulary: any text encodes, frequent env words are one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from envs import vocab_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(vocab_corpus() + [CHAT_TEMPLATE], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _text_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest vLLM's CPU attention supports
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


LM_HEAD_SCALE = 16.0


def build_tiny_model(out: str | Path, arch: str = "idefics3", seed: int = 0) -> Path:
    """Write a tiny float32 model plus its processor (tokenizer, chat template, image processor) to `out`."""
    if arch not in ("idefics3", "text"):
        raise ValueError(f"unknown tiny model arch {arch!r}; expected 'idefics3' or 'text'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    torch.manual_seed(seed)
    if arch == "text":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(_text_config(tokenizer))
        tokenizer.save_pretrained(out)
    else:
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3VisionConfig,
        )

        vision = Idefics3VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=1,  # head_dim 32
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        )
        config = Idefics3Config(
            vision_config=vision.to_dict(),
            text_config=_text_config(tokenizer).to_dict(),
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
            scale_factor=SCALE_FACTOR,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        model = Idefics3ForConditionalGeneration(config)
        idefics3_processor(tokenizer, CHAT_TEMPLATE).save_pretrained(out)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    # A random LM head of std 0.02 behind RMSNorm (|h| = 8) caps every logit near +-1.3, so pi stays
    # almost uniform whatever LoRA does and V = sum_a pi Q carries no information (docs/learner.md).
    # A pretrained model has peaked logits; a 16x head gives the tiny one the same room.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(LM_HEAD_SCALE)
    model.to(torch.float32).save_pretrained(out)
    return out
