"""AFSFT from mostly malformed data, on the tiny model, at two sample budgets: the regime the pretrained
run is in (a base model's data is mostly malformed) at a cost of minutes instead of hours.

The data: NumberLine, `malformed:0.95` (random moves, 95% of the outputs malformed), 2000 episodes.
`full` is configs/numberline.yaml's offline phase (700 updates of 128 turns); `budget` is the pretrained
run's (configs/smollm2_numberline.yaml: 150 updates of 16 turns, a 30-update SFT warm-up). Each
variant is a real `vlmq train` run with the offline phase only, evaluated greedily; a variant adds
overrides to its budget's, so each lever is measured against the run it changes.

    .venv/bin/python benchmarks/sample_budget.py [--variants budget_afsft budget_sft_plain ...] [--seeds 0]

Writes benchmarks/results/sample_budget.json ({variant: {overrides, success: [...], syntax: [...],
wall_s: [...], probe: {...}}}), keeping the variants it does not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from suite import vlmq  # noqa: E402

log = logging.getLogger("sample_budget")
CONFIG = str(REPO / "configs" / "numberline.yaml")
DATA = ["data.policy=malformed:0.95", "data.episodes=2000"]
BUDGETS = {
    "full": [],
    "budget": [
        "learner.batch_size=16", "learner.offline_steps=150", "learner.lr_decay_steps=150",
        "learner.sft_warmup_steps=30",
    ],
}  # fmt: skip
SFT_PLAIN = ["learner.filter=none", "learner.critic_coef=0"]
VARIANTS = {
    "full_afsft": ("full", []),
    "full_sft_plain": ("full", SFT_PLAIN),
    "budget_afsft": ("budget", []),
    "budget_sft_plain": ("budget", SFT_PLAIN),
}
OUT = REPO / "benchmarks" / "results" / "sample_budget.json"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--root", default=str(REPO / "runs" / "sample_budget"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    root, out_path = Path(args.root), Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    data = root / "dataset"
    if not (data / "meta.json").exists():
        vlmq("data", "collect", "--config", CONFIG, "--out", str(data), *DATA)
    for name in args.variants:
        budget, extra = VARIANTS[name]
        sets = [f"data.path={data}", "learner.online_steps=0", *BUDGETS[budget], *extra]
        row = {"overrides": sets, "success": [], "syntax": [], "wall_s": []}
        for seed in args.seeds:
            run = f"{name}-s{seed}"
            wall = vlmq(
                "train", "--config", CONFIG, f"out_dir={root}", f"name={run}", f"learner.seed={seed}",
                f"replay.seed={seed}", *sets,
            )  # fmt: skip
            res = json.loads((root / run / "results.json").read_text())
            row["success"].append(res["success_offline"])
            row["syntax"].append(res["syntax_offline"])
            row["wall_s"].append(round(wall, 1))
            log.info(
                "%s seed %d: success %.3f syntax %.3f",
                name,
                seed,
                res["success_offline"],
                res["syntax_offline"],
            )
        out[name] = row
        out_path.write_text(json.dumps(out, indent=1))  # each variant lands as it finishes


if __name__ == "__main__":
    main()
