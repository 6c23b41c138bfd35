"""Does the critic know what an early end of turn costs? Q and pi of end-of-turn inside the format.

A NumberLine answer is a few tokens and then end-of-turn (`{"` `action` `":` ` "+"}` EOT). A random-
policy dataset only ever shows EOT at the end, so Q(s_k, EOT) at an earlier position k is never
trained: it is whatever the critic generalises from the last position, where EOT earns the turn's
reward. Over the distinct held-out start states this reports, for each run checkpoint, the mean over
states of max_k Q(s_k, EOT) and max_k pi(EOT | s_k) over the positions before the last, the share of
states where some position's critic prefers EOT to the right token (the filter then rejects the right
token there), and greedy success and syntax (40 held-out episodes).

    .venv/bin/python benchmarks/early_eos.py runs/<a>:850 runs/<b>:700 ... [--out results/early_eos.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from numberline_offline import answer_heads, evaluate, start_states  # noqa: E402

from envs.base import format_action  # noqa: E402
from learner.processing import text_to_gen_ids  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402


def early_eot(learner: Learner, seed: int, resets: int = 300) -> dict:
    tok, states = learner.processor.tokenizer, start_states(seed, resets)
    q_max, pi_max, prefers = [], [], 0
    for (messages, images), right in states:
        ids = text_to_gen_ids(tok, format_action(right))
        eot, early = ids[-1], range(len(ids) - 1)
        logits, q, _ = answer_heads(learner, messages, images, ids)
        pi = torch.softmax(logits, -1)
        q_max.append(max(float(q[k, eot]) for k in early))
        pi_max.append(max(float(pi[k, eot]) for k in early))
        prefers += any(q[k, eot] > q[k, ids[k]] for k in early)
    n = len(states)
    return {
        "q_eot_early_max": round(sum(q_max) / n, 3),
        "pi_eot_early_max": round(sum(pi_max) / n, 3),
        "critic_prefers_early_eot": round(prefers / n, 3),
        "states": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+", help="RUN_DIR:UPDATE")
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "early_eos.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows, t0 = [], time.time()
    for spec in args.checkpoints:
        run, update = spec.rsplit(":", 1)
        cfg = load_config(str(Path(run) / "config.yaml"), [])
        learner = Learner(cfg.model, cfg.learner)
        learner.load(Path(run) / "checkpoints" / f"step_{int(update):07d}" / "learner")
        ev = evaluate(learner, args.eval_episodes, cfg.eval.seed)
        row = {"run": Path(run).name, "data": cfg.data.policy, "update": int(update)}
        row.update(early_eot(learner, cfg.eval.seed))
        row.update(success=round(ev["success"], 3), syntax=round(ev["syntax"], 3))
        print(row, flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({"rows": rows, "wall_s": round(time.time() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
