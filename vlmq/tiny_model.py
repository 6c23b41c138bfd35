"""Build a tiny random-initialised VLM offline, in seconds, for the demo, the tests and the benchmarks.

Machines here have no model hub, so the project makes its own model: a byte-level BPE tokenizer
trained on the environments' own prompts and outputs, a chat template with image placeholders, and
a tiny language model (2 layers, width 64) with a tiny vision tower. The default is an Idefics3
(SmolVLM) model with a Llama LM, whose PIL processor needs only numpy and Pillow; `arch` builds one
of the same size as Qwen2.5-VL, Qwen2-VL (Qwen2 LMs), LLaVA (Llama) or PaliGemma (Gemma), each with
its own processor, placeholders and quirks (docs/models.md), or a text-only Llama with the same
tokenizer. transformers and vLLM load every one.

Everything is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

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


def chat_template(end_of_turn: str, system: str = "", image: str = IMAGE, reply: str = "\n") -> str:
    """ChatML with image parts: `{"type": "image"}` content entries become `image` (the architecture's
    placeholder), which its processor expands to the image's tokens; `system`, if given, is the
    default first turn; the generation prompt ends in `reply`."""
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
        f"{{% if part['type'] == 'image' %}}{{{{ '{image}' }}}}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        f"{{{{ '{end_of_turn}\n' }}}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant{reply}' }}}}{{% endif %}}"
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


def _train_tokenizer(extra: tuple[str, ...], template: str):
    """A byte-level BPE over the env vocabulary: any text encodes, frequent env words are one token.
    `extra`: an architecture's own image tokens, after the shared ones (so Idefics3's ids never move)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from envs import vocab_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS + list(extra),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(vocab_corpus() + [template], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=template,
        model_max_length=4096,
    )


# The language model's size in every architecture (each in its own family: Llama, Qwen2, Gemma): 2
# layers, width 64, head_dim 32 (the smallest vLLM's CPU attention supports). The vision towers are as
# small: width 32, one head, 2 layers, and each turns a 64x64 image into IMAGE_SEQ_LEN (16) tokens:
# Idefics3 and Qwen by 8x8 patches merged 2x2, LLaVA's CLIP and PaliGemma's SigLIP by 16x16 patches.
LM = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1)
QWEN_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"  # the processor repeats <|image_pad|>
ARCHS = ("idefics3", "qwen2_5_vl", "qwen2_vl", "llava", "paligemma", "text")
VIT_PATCH = 16
assert (IMAGE_SIZE // VIT_PATCH) ** 2 == IMAGE_SEQ_LEN


def _ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(**LM, **_ids(tokenizer), tie_word_embeddings=False)


def _idefics3(tok):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    vision = Idefics3VisionConfig(**VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=_text_config(tok).to_dict(),
        image_token_id=tok.convert_tokens_to_ids(IMAGE),
        scale_factor=SCALE_FACTOR,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return Idefics3ForConditionalGeneration(config), idefics3_processor(tok, CHAT_TEMPLATE)


def _qwen(tok, arch: str):
    """Qwen2-VL / Qwen2.5-VL: patches of 8 merged 2x2, so a 64x64 image is 16 tokens; M-RoPE splits
    head_dim 32 into (temporal, height, width) sections of 4 + 6 + 6 frequencies."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    grid = dict(patch_size=PATCH_SIZE, spatial_merge_size=SCALE_FACTOR, temporal_patch_size=2)
    text = dict(**LM, **_ids(tok), rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6]})
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=LM["hidden_size"], num_heads=1, mlp_ratio=2, **grid)
        cls, config_cls, proc_cls = Qwen2VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLProcessor
    else:  # windowed attention in block 0 (windows of 2x2 merged tokens), full attention in block 1
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=1, **grid,
                      out_hidden_size=LM["hidden_size"], window_size=32, fullatt_block_indexes=[1])  # fmt: skip
        cls, config_cls, proc_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    ids = {
        f"{k}_token_id": tok.convert_tokens_to_ids(t)
        for k, t in zip(("vision_start", "image", "vision_end", "video"), QWEN_TOKENS)
    }
    config = config_cls(text_config=text, vision_config=vision, **ids, tie_word_embeddings=False)
    sizes = dict(patch_size=PATCH_SIZE, merge_size=SCALE_FACTOR, temporal_patch_size=2,
                 size={"shortest_edge": IMAGE_SIZE**2, "longest_edge": IMAGE_SIZE**2})  # fmt: skip
    proc = proc_cls(  # the processor class requires a video processor; the envs never send video
        image_processor=Qwen2VLImageProcessorPil(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )
    return cls(config), proc


def _llava(tok):
    """LLaVA-1.5's layout: a CLIP tower (patch 16: 16 patches and a CLS token, dropped), an MLP projector."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = CLIPVisionConfig(**VISION, image_size=IMAGE_SIZE, patch_size=VIT_PATCH, projection_dim=32)
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=_text_config(tok).to_dict(),
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_seq_length=IMAGE_SEQ_LEN,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    proc = LlavaProcessor(
        image_processor=images, tokenizer=tok, patch_size=VIT_PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tok.chat_template,
    )  # fmt: skip
    return LlavaForConditionalGeneration(config), proc


def _paligemma(tok):
    """PaliGemma: a SigLIP tower (patch 16: 16 tokens) and a Gemma LM. Its prompt layout is fixed:
    every image first, then BOS, the text and a newline (the processor and vLLM both build it), so its
    chat template writes no image placeholder; vLLM looks the newline up as the token "\\n", which a
    byte-level vocabulary spells otherwise, so it is added. The processor adds its <loc> and <seg>
    tokens, and the model is sized after them."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok.add_tokens(["\n"])
    images = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    images.image_seq_length = IMAGE_SEQ_LEN
    proc = PaliGemmaProcessor(image_processor=images, tokenizer=tok, chat_template=tok.chat_template)
    # causal, as vLLM serves it: transformers' PaliGemma default attends both ways (learner.model)
    text = dict(model_type="gemma", **LM, head_dim=32, hidden_activation="gelu_pytorch_tanh", **_ids(tok),
                tie_word_embeddings=False, use_bidirectional_attention=False)  # fmt: skip
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **VISION, image_size=IMAGE_SIZE, patch_size=VIT_PATCH,
                           projection_dim=LM["hidden_size"]),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        projection_dim=LM["hidden_size"],
        hidden_size=LM["hidden_size"],
        vocab_size=len(tok),
        tie_word_embeddings=False,  # the 16x LM head (below) must not scale the input embeddings
    )  # fmt: skip
    return PaliGemmaForConditionalGeneration(config), proc


LM_HEAD_SCALE = 16.0


def build_tiny_model(out: str | Path, arch: str = "idefics3", seed: int = 0) -> Path:
    """Write a tiny float32 model plus its processor (tokenizer, chat template, image processor) to `out`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny model arch {arch!r}; expected one of {', '.join(ARCHS)}")
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    qwen = arch.startswith("qwen")
    extra, image = (QWEN_TOKENS, QWEN_IMAGE) if qwen else ((), "" if arch == "paligemma" else IMAGE)
    reply = "" if arch == "paligemma" else "\n"  # PaliGemma's processor and vLLM end the prompt in "\n"
    tokenizer = _train_tokenizer(extra, chat_template(EOS, image=image, reply=reply))
    torch.manual_seed(seed)
    if arch == "text":
        from transformers import LlamaForCausalLM

        model, processor = LlamaForCausalLM(_text_config(tokenizer)), tokenizer
    elif arch == "idefics3":
        model, processor = _idefics3(tokenizer)
    elif qwen:
        model, processor = _qwen(tokenizer, arch)
    elif arch == "llava":
        model, processor = _llava(tokenizer)
    else:
        model, processor = _paligemma(tokenizer)
    processor.save_pretrained(out)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    # A random LM head of std 0.02 behind RMSNorm (|h| = 8) caps every logit near +-1.3, so pi stays
    # almost uniform whatever LoRA does and V = sum_a pi Q carries no information (docs/learner.md).
    # A pretrained model has peaked logits; a 16x head gives the tiny one the same room.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(LM_HEAD_SCALE)
    model.to(torch.float32).save_pretrained(out)
    if arch in ("llava", "paligemma"):
        _nest_vision_tower(out / "model.safetensors")
    return out


def _nest_vision_tower(weights: Path) -> None:
    """transformers 5 saves a CLIP/SigLIP tower as `vision_tower.*`; vLLM and the published LLaVA and
    PaliGemma checkpoints have `vision_tower.vision_model.*`, which transformers also loads."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    nested = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
    save_file(nested, weights, metadata={"format": "pt"})
