"""How did a NumberLine run's offline phase go? The critic probe and greedy success over its updates.

Two modes, on a finished run directory (its config, checkpoints and dataset):
- default: every saved learner checkpoint up to `learner.offline_steps` is probed as it is;
- `--continue-from N --updates M`: the checkpoint at update N is trained M more offline-only updates
  on the run's own dataset (batches of `learner.batch_size` turns, as the driver draws them) and
  probed every `--every` updates: would a longer offline phase have helped?

The probe is benchmarks/numberline_offline.py's: the share of the 30 held-out states where the critic
ranks the right move above the wrong one, and greedy success on `--eval-episodes` held-out episodes.

    .venv/bin/python benchmarks/offline_probe.py runs/<run> [--out benchmarks/results/offline_probe_<x>.json]
    .venv/bin/python benchmarks/offline_probe.py runs/<run> --continue-from 700 --updates 500
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from numberline_offline import critic_probe, evaluate, load_turns  # noqa: E402

from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402


def probe(learner: Learner, update: int, episodes: int, seed: int) -> dict:
    p = critic_probe(learner, 100, seed)
    ev = evaluate(learner, episodes, seed)
    row = {
        "update": update,
        "critic_agree": round(p["critic_agree"], 3),
        "critic_gap": round(p["critic_gap"], 3),
        "success": round(ev["success"], 3),
        "syntax": round(ev["syntax"], 3),
    }
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a NumberLine run directory with checkpoints and its dataset")
    ap.add_argument("--continue-from", type=int, default=None, help="train on from this update")
    ap.add_argument("--updates", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="batch sampling when continuing")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "offline_probe.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    cfg = load_config(str(run / "config.yaml"), [])
    learner = Learner(cfg.model, cfg.learner)
    rows, t0, seed = [], time.time(), cfg.eval.seed
    if args.continue_from is None:
        for d in sorted((run / "checkpoints").glob("step_*")):
            update = int(d.name.split("_")[1])
            if update <= cfg.learner.offline_steps:
                learner.load(d / "learner")
                rows.append(probe(learner, update, args.eval_episodes, seed))
    else:
        learner.load(run / "checkpoints" / f"step_{args.continue_from:07d}" / "learner")
        turns, rng = load_turns(str(run / "dataset")), random.Random(args.seed)
        for u in range(args.updates + 1):
            if u % args.every == 0:
                rows.append(probe(learner, args.continue_from + u, args.eval_episodes, seed))
            if u < args.updates:
                learner.step(rng.sample(turns, cfg.learner.batch_size))
    out = {
        "run": run.name,
        "offline_steps": cfg.learner.offline_steps,
        "continue_from": args.continue_from,
        "eval_episodes": args.eval_episodes,
        "rows": rows,
        "wall_s": round(time.time() - t0, 1),
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
