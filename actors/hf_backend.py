"""Transformers backend: batched `generate` with peft adapters. Starts in seconds; for tests and small
CPU runs.

Prompts are encoded by `learner.processing.encode_prompt`, the function the learner's batch builder
uses, so `prompt_ids` are the learner's ids. `logprobs` are the behaviour log-probs of the sampled
tokens under the model's own distribution at temperature 1 (the raw logits, before temperature,
suppressed special tokens or any other warper), the same quantity `score` and the learner compute; at
temperature != 1 this is not the sampling distribution, but it is the policy the learner trains.

Adapter versions are peft adapters named `v<key>` on one PeftModel; key 0 is the base model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from actors.protocol import Completion, Request
from learner.model import load_backbone
from learner.processing import encode_prompt, load_processor, suppressed_ids, token_types

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFBackend:
    def __init__(
        self,
        model_path: str,
        text_only: bool = False,
        dtype: str = "float32",
        seed: int = 0,
        device: str | None = None,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(_DTYPES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = load_processor(str(model_path), text_only)
        tok = getattr(self.processor, "tokenizer", self.processor)
        self.model: Any = load_backbone(str(model_path), text_only, dtype).to(self.device).eval()
        self.eos_id = self.model.generation_config.eos_token_id
        if isinstance(self.eos_id, list):
            self.eos_id = self.eos_id[0]
        if self.eos_id is None:
            self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.tokenizer = tok
        self.suppress = suppressed_ids(tok, self.eos_id)
        self.peft = False
        torch.manual_seed(seed)

    # ---- adapters -----------------------------------------------------------------------------
    def load_lora(self, version: int, path: str) -> None:
        from peft import PeftModel

        name = f"v{version}"
        if not self.peft:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            self.peft = True
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()

    def unload_lora(self, version: int) -> None:
        name = f"v{version}"
        if self.peft and name in self.model.peft_config:
            others = [a for a in self.model.peft_config if a != name]
            if others and self.model.active_adapter == name:
                self.model.set_adapter(others[0])
            if others:  # peft cannot delete the last adapter; keeping it loaded costs little
                self.model.delete_adapter(name)

    def _use(self, version: int):
        """A context that runs the model with adapter `version` (0: base weights)."""
        import contextlib

        if version == 0:
            return self.model.disable_adapter() if self.peft else contextlib.nullcontext()
        name = f"v{version}"
        if not self.peft or name not in self.model.peft_config:
            raise KeyError(f"adapter version {version} is not loaded")
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    # ---- batching ------------------------------------------------------------------------------
    def _collate(self, encs: list[dict]) -> dict[str, torch.Tensor]:
        """Left-pad input ids (generation appends on the right); image tensors concatenate on dim 0."""
        n = max(len(e["input_ids"]) for e in encs)
        ids = torch.full((len(encs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), n), dtype=torch.long)
        for b, e in enumerate(encs):
            k = len(e["input_ids"])
            ids[b, n - k :] = torch.tensor(e["input_ids"])
            mask[b, n - k :] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        for key in encs[0]:
            if key != "input_ids":
                out[key] = torch.cat([e[key] for e in encs], 0)
        dtype = self.model.dtype
        return {k: v.to(self.device, dtype if v.is_floating_point() else None) for k, v in out.items()}

    @staticmethod
    def _signature(enc: dict) -> tuple:
        """Requests batch together only when their image tensors stack (same count and size)."""
        return tuple((k, tuple(v.shape)) for k, v in sorted(enc.items()) if k != "input_ids")

    @torch.no_grad()
    def generate(self, requests: list[Request], version: int) -> list[Completion]:
        encs = [encode_prompt(self.processor, r.messages, r.images) for r in requests]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (r, e) in enumerate(zip(requests, encs)):
            if r.max_tokens < 1:
                raise ValueError(f"request {i}: max_tokens must be >= 1, got {r.max_tokens}")
            if r.temperature < 0:
                raise ValueError(f"request {i}: temperature must be >= 0, got {r.temperature}")
            groups[(float(r.temperature), self._signature(e))].append(i)
        out: list[Completion | None] = [None] * len(requests)
        for (temp, _), idx in groups.items():
            batch = self._collate([encs[i] for i in idx])
            width = batch["input_ids"].shape[1]
            # pure temperature sampling: no top-k/top-p the model's generation config might carry
            sample = {"do_sample": True, "temperature": temp, "top_k": 0, "top_p": 1.0} if temp > 0 else {}
            with self._use(version):
                res = self.model.generate(
                    **batch,
                    **token_types(self.model.config, batch["input_ids"]),
                    max_new_tokens=max(requests[i].max_tokens for i in idx),
                    **(sample or {"do_sample": False}),
                    suppress_tokens=self.suppress or None,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.pad_id,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            seqs = res.sequences[:, width:]
            logp = torch.log_softmax(torch.stack(res.logits, 1).float(), -1)
            logp = logp.gather(-1, seqs[..., None]).squeeze(-1)
            for b, i in enumerate(idx):
                ids = seqs[b, : requests[i].max_tokens].tolist()
                if self.eos_id in ids:
                    ids = ids[: ids.index(self.eos_id) + 1]
                out[i] = Completion(
                    gen_ids=ids,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    logprobs=logp[b, : len(ids)].tolist(),
                    prompt_ids=list(encs[i]["input_ids"]),
                    version=version,
                )
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def score(self, messages: list[dict], images: list, gen_ids: list[int], version: int) -> list[float]:
        """Log-probs (temperature 1) of `gen_ids` after the prompt: one unpadded forward pass."""
        enc = encode_prompt(self.processor, messages, images)
        n = len(enc["input_ids"])
        enc = dict(enc, input_ids=list(enc["input_ids"]) + list(gen_ids))
        batch = self._collate([enc])
        with self._use(version):
            types = token_types(self.model.config, batch["input_ids"])
            logits = self.model(**batch, **types).logits[0, n - 1 : n - 1 + len(gen_ids)].float()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen_ids, device=logits.device)[:, None])
        return lp.squeeze(-1).tolist()
