"""Seconds per learner update at 1 and 2 torch threads: `make run`'s learner (configs/numberline.yaml:
the tiny VLM, images and words, 128 turns per update) -> benchmarks/results/learner_threads.json.

On a CPU-only machine the offline phase waits on the learner alone, so this is what `learner.num_cpus`
buys there. Thread counts alternate update by update on one learner, so machine load hits both alike.

    .venv/bin/python benchmarks/learner_threads.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
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
from vlmq.config import load_config  # noqa: E402
from vlmq.tiny_model import build_tiny_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "learner_threads.json"
THREADS = (1, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "tiny-vlm", seed=0)
        cfg = load_config(Path(__file__).parents[1] / "configs" / "numberline.yaml", [f"model.path={path}"])
        learner = Learner(cfg.model, dataclasses.replace(cfg.learner, sft_warmup_steps=0))
        turns = collect(200, seed=0)[0]
        rng = random.Random(0)

        def draw() -> list:
            return rng.sample(turns, cfg.learner.batch_size)

        for n in THREADS:  # warm up at each count
            torch.set_num_threads(n)
            learner.step(draw())
        times: dict[int, list[float]] = {n: [] for n in THREADS}
        for _ in range(args.repeats):
            for n in THREADS:
                torch.set_num_threads(n)
                batch = draw()
                t0 = time.perf_counter()
                learner.step(batch)
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    out = {
        "step_s": {str(n): round(med[n], 4) for n in THREADS},
        "speedup_2_threads": round(med[1] / med[2], 3),
        "batch_turns": cfg.learner.batch_size,
        "statistic": f"median of {args.repeats} alternating updates after one warm-up at each count",
        "machine": f"{os.cpu_count()} CPU cores",
        "times": {str(n): [round(x, 4) for x in v] for n, v in times.items()},
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
