"""Is the offline phase long enough? Continue a NumberLine run's offline phase and probe as it goes.

Loads a finished run's learner checkpoint at `--from-step` and trains `--updates` more offline-only
updates on the run's own dataset (the same batches the driver would draw: `learner.batch_size`
offline turns), recording every `--every` updates the critic probe and greedy success on held-out
episodes (benchmarks/numberline_offline.py). Writes benchmarks/results/offline_budget.json.

    .venv/bin/python benchmarks/offline_budget.py runs/<run> [--from-step 700] [--updates 400]
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
from numberline_offline import critic_probe, evaluate  # noqa: E402
from online_malformed import load_turns  # noqa: E402

from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a NumberLine run directory with checkpoints and its dataset")
    ap.add_argument("--from-step", type=int, default=700)
    ap.add_argument("--updates", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="batch sampling")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "offline_budget.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    cfg = load_config(str(run / "config.yaml"), [])
    learner = Learner(cfg.model, cfg.learner)
    learner.load(run / "checkpoints" / f"step_{args.from_step:07d}" / "learner")
    turns = load_turns(str(run / "dataset"))
    rng, rows, t0 = random.Random(args.seed), [], time.time()
    for u in range(args.updates + 1):
        if u % args.every == 0:
            row = {"update": args.from_step + u, **critic_probe(learner, 100, cfg.eval.seed)}
            ev = evaluate(learner, args.eval_episodes, cfg.eval.seed)
            row.update(success=round(ev["success"], 3), syntax=round(ev["syntax"], 3))
            row.update(critic_agree=round(row["critic_agree"], 3), critic_gap=round(row["critic_gap"], 3))
            rows.append(row)
            print(row, flush=True)
        if u < args.updates:
            learner.step(rng.sample(turns, cfg.learner.batch_size))
    out = {
        "run": run.name,
        "from_step": args.from_step,
        "eval_episodes": args.eval_episodes,
        "probe_states": rows[0]["states"],
        "rows": rows,
        "wall_s": round(time.time() - t0, 1),
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
