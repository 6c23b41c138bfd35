"""Shared fixtures. Expensive things (the tiny model, a Ray instance) are built once per session."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Fails the session when a process it started (Ray workers, vLLM engines, CLI subprocesses) outlives it.
pytest_plugins = ["leak_check"]

# peft LoRA on the language model's attention projections only (the vision tower's SigLIP layers
# also have q/k/v projections; a regex keeps them out). Matches Idefics3 and plain Llama names.
TEXT_ATTN_LORA_TARGETS = r"model\.(text_model\.)?layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """The tiny Idefics3 VLM (seed 0), built once per test session."""
    from vlmq.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-vlm"), arch="idefics3", seed=0)


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """The tiny text-only Llama (seed 0), built once per test session."""
    from vlmq.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-text"), arch="text", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _browsers_closed_after_each_module():
    """MiniWoB envs keep their process's Chromiums and browsergym's global Playwright driver running
    after `close()` (for speed), so a module that used one would leave them to the end of the
    session; stopping the driver closes the browsers it launched."""
    yield
    core = sys.modules.get("browsergym.core")
    if core is not None and core._PLAYWRIGHT is not None:
        from envs.miniwob import _on_browser_thread

        _on_browser_thread(core._PLAYWRIGHT.stop)  # its sync API is bound to the thread that started it
        core._set_global_playwright(None)  # the next MiniWoB env starts a fresh one


@pytest.fixture(scope="module")
def ray_local(request):
    """A local Ray for one test module (or the one already running), shut down after it if started here.

    The requesting module is pickled by value: Ray workers cannot import tests/, so functions and
    actors defined in a test module would not unpickle there otherwise.
    """
    import ray

    ray.cloudpickle.register_pickle_by_value(request.module)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def vllm_backend(tiny_vlm_dir):
    """ONE vLLM-CPU engine (LoRA enabled) on the tiny VLM for the whole suite (a cold start is ~40 s).

    Tests that load adapters must use a fresh version number each (see `fresh_version`).
    """
    from actors.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(tiny_vlm_dir), max_loras=3, max_lora_rank=16, seed=0)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="session")
def fresh_version():
    """Returns a new policy version number on every call, unique across the session's tests."""
    import itertools

    counter = itertools.count(1000)
    return lambda: next(counter)


@pytest.fixture(scope="session")
def make_lora_adapter(tiny_vlm_dir, tmp_path_factory):
    """Factory: a random peft LoRA adapter folder for a tiny model, with non-zero B so it changes outputs.

    `make_lora_adapter(seed=1, model_dir=None, r=8) -> Path` (model_dir defaults to the tiny VLM).
    """

    def make(seed: int = 1, model_dir: Path | None = None, r: int = 8) -> Path:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        model_dir = Path(model_dir or tiny_vlm_dir)
        is_vlm = AutoConfig.from_pretrained(model_dir).model_type == "idefics3"
        auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
        base = auto.from_pretrained(model_dir, dtype=torch.float32)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TEXT_ATTN_LORA_TARGETS)
        model = get_peft_model(base, cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        out = tmp_path_factory.mktemp(f"lora-seed{seed}")
        model.save_pretrained(out)
        return out

    return make
