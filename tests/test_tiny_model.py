"""The tiny offline model: builds, reloads with the Auto classes, generates from an image; deterministic."""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import warnings

import numpy as np
import pytest
import torch

from learner.processing import encode_prompt, load_processor
from vlmq.tiny_model import IMAGE, IMAGE_SEQ_LEN, build_tiny_model

PROMPT = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": 'Position 3, target 7. Legal: "+", "-".'}],
    }
]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8)


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_vlm_reloads_and_generates_from_an_image(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText

    processor = load_processor(str(tiny_vlm_dir))
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    assert model.dtype == torch.float32
    assert model.config.text_config.hidden_size <= 128 and model.config.text_config.num_hidden_layers == 2
    assert len(processor.tokenizer) <= 2048

    enc = encode_prompt(processor, PROMPT, [_image(0)])
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    assert enc["input_ids"].count(image_id) == IMAGE_SEQ_LEN
    assert enc["pixel_values"].shape[-2:] == (64, 64)

    ids = torch.tensor([enc["input_ids"]])
    kwargs = dict(pixel_values=enc["pixel_values"], pixel_attention_mask=enc["pixel_attention_mask"])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, **kwargs
    )
    gen = out[0, ids.shape[1] :].tolist()
    assert 1 <= len(gen) <= 8 and all(0 <= t < len(processor.tokenizer) for t in gen)
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id  # stops at end of turn

    # The image reaches the language model: another image, other logits.
    with torch.no_grad():
        a = model(input_ids=ids, **kwargs).logits[0, -1]
        other = encode_prompt(processor, PROMPT, [_image(1)])
        b = model(
            input_ids=ids,
            pixel_values=other["pixel_values"],
            pixel_attention_mask=other["pixel_attention_mask"],
        ).logits[0, -1]
    assert not torch.allclose(a, b)


def test_text_model_reloads_with_its_tokenizers_vocabulary_and_eos(tiny_text_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_processor(str(tiny_text_dir), text_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_dir)
    enc = encode_prompt(tokenizer, [{"role": "user", "content": [{"type": "text", "text": "Position 3"}]}])
    assert set(enc) == {"input_ids"}
    assert model.config.vocab_size == len(tokenizer)  # every token the model can emit decodes
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_building_and_loading_warn_nothing(tmp_path):
    """No Python warning and no record from transformers' loggers (which do not propagate to the root,
    so caplog would miss them). Their warn-once cache is emptied first: a warning already given in this
    session would otherwise not show again."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    records = logging.handlers.BufferingHandler(capacity=10_000)
    logging.getLogger("transformers").addHandler(records)
    logging.Logger.warning_once.cache_clear()  # transformers' lru_cache on logging.Logger
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vlm, text = build_tiny_model(tmp_path / "vlm"), build_tiny_model(tmp_path / "text", arch="text")
            assert AutoConfig.from_pretrained(vlm).text_config.pad_token_id == 0  # the model's own pad id
            load_processor(str(vlm))
            AutoModelForImageTextToText.from_pretrained(vlm)
            load_processor(str(text), text_only=True)
            AutoModelForCausalLM.from_pretrained(text)
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [r.getMessage() for r in records.buffer if r.levelno >= logging.WARNING] == []


def test_vlm_and_text_share_the_tokenizer(tiny_vlm_dir, tiny_text_dir):
    assert (tiny_vlm_dir / "tokenizer.json").read_bytes() == (tiny_text_dir / "tokenizer.json").read_bytes()


def test_same_seed_gives_identical_files_other_seed_other_weights(tiny_vlm_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_vlm_dir)
    other = _digests(build_tiny_model(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != _digests(tiny_vlm_dir)["model.safetensors"]
    assert other["tokenizer.json"] == _digests(tiny_vlm_dir)["tokenizer.json"]


def test_encode_prompt_rejects_bad_input(tiny_vlm_dir, tiny_text_dir):
    processor = load_processor(str(tiny_vlm_dir))
    with pytest.raises(ValueError, match="1 image placeholders but 0 images"):
        encode_prompt(processor, PROMPT, [])
    with pytest.raises(ValueError, match="uint8"):
        encode_prompt(processor, PROMPT, [np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="text-only"):
        encode_prompt(load_processor(str(tiny_text_dir), text_only=True), PROMPT, [_image(0)])
    with pytest.raises(ValueError, match="unknown tiny model arch"):
        build_tiny_model(tiny_vlm_dir.parent / "x", arch="qwen")
