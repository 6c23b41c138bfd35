"""One run's final policy evaluated greedily and sampled, on the same held-out seeds.

A greedy policy that repeats one move in a state it comes back to never leaves it (BabyAI: turn left,
turn right, ...), and its failed episodes then run to the time limit; sampling breaks such loops. So
when sampled success is well above greedy success and greedy's failures last the whole limit, the
policy knows the way and argmax loops; when both are low, it does not know the way.

    .venv/bin/python benchmarks/eval_temperature.py --run runs/suite/babyai-afsft_online-s0 \
        [--temperatures 0 0.5] [--out benchmarks/results/eval_temperature/<run name>.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/, whose actors.py would shadow the package

from vlmq.evaluate import evaluate_run  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "eval_temperature"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Path(args.run)
    out: dict = {"run": run.name, "temperatures": {}}
    for t in args.temperatures:
        t0 = time.time()
        res = evaluate_run(run, overrides=[f"eval.temperature={t}"])
        out["temperatures"][str(t)] = {**res, "wall_s": round(time.time() - t0, 1)}
        logging.info("temperature %s: %s", t, out["temperatures"][str(t)])
    path = Path(args.out) if args.out else OUT / f"{run.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
