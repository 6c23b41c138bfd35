"""Seconds per learner update, AFSFT vs SFT, same batch, tiny VLM on CPU.

AFSFT = the default (critic + target heads on the same backbone pass, plus one no-grad pass over the
next turns' prompts for the bootstrap value); SFT = `filter="none", critic_coef=0` (no critic, no
next-prompt pass). Interleaved timing (AFSFT, SFT, AFSFT, ...) so machine load hits both alike; the
prompt cache is warm for both. Writes benchmarks/results/learner_step.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from numberline_offline import collect  # noqa: E402

from learner.trainer import Learner  # noqa: E402
from vlmq.config import LearnerConfig, ModelConfig  # noqa: E402
from vlmq.tiny_model import build_tiny_model  # noqa: E402

BATCH, WARMUP, REPEATS = 32, 2, 10


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    with tempfile.TemporaryDirectory() as tmp:
        model = ModelConfig(path=str(build_tiny_model(Path(tmp) / "tiny-vlm", seed=0)))
        turns = collect(40, seed=0)[0][:BATCH]
        learners = {
            "afsft": Learner(model, LearnerConfig(filter="binary")),
            "sft": Learner(model, LearnerConfig(filter="none", critic_coef=0.0)),
        }
        for learner in learners.values():
            for _ in range(WARMUP):
                learner.step(turns)
        times: dict[str, list[float]] = {k: [] for k in learners}
        for _ in range(REPEATS):
            for name, learner in learners.items():
                t0 = time.perf_counter()
                learner.step(turns)
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out = {
        "afsft_s": round(med["afsft"], 4),
        "sft_s": round(med["sft"], 4),
        "ratio": round(med["afsft"] / med["sft"], 3),
        "batch_turns": BATCH,
        "tokens_per_row": "prompt ~110 (16 image tokens) + ~7 generated",
        "statistic": f"median of {REPEATS} interleaved updates after {WARMUP} warm-up updates",
        "threads": torch.get_num_threads(),
        "times": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    path = Path(__file__).parent / "results" / "learner_step.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
