"""Why `make run`'s online phase collapsed at sampling temperature 1: malformed online turns.

Takes a finished NumberLine run made at temperature 1, e.g.

    .venv/bin/vlmq train --config configs/numberline.yaml sampler.temperature=1.0 name=t1
    .venv/bin/python benchmarks/online_malformed.py runs/t1

and replays its first online update window by hand: from the offline checkpoint (update
`learner.offline_steps`), `--updates` learner updates on batches of half offline turns and half the
online turns of LoRA version 1 (what phase 2 trains on first), once with all of those online turns
and once with only the well-formed ones. It records, for the malformed turns, the share of their
first malformed token and of the tokens after it that pass the AFSFT filter (A > threshold), and
the greedy success and syntax on held-out episodes. Writes benchmarks/results/online_malformed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from numberline_offline import evaluate, load_turns  # noqa: E402

from envs.base import format_action  # noqa: E402
from learner.batch import build_batch  # noqa: E402
from learner.losses import advantage_unit, values  # noqa: E402
from learner.processing import (
    load_processor,  # noqa: E402
    text_to_gen_ids,  # noqa: E402
)
from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402


@torch.no_grad()
def filter_pass(learner: Learner, malformed: list, well_formed_prefix: list[int]) -> dict:
    """Share of malformed turns' first off-format token, and of the tokens after it, with A > threshold."""
    b = build_batch(malformed, learner.processor, learner.cfg)
    learner.model.eval()
    s = b.seqs
    logits, q, _, v_head = learner.model(s.input_ids, s.attention_mask, s.images, b.positions)
    q_sa = q.float().mean(0).gather(-1, b.actions[..., None])[..., 0]
    adv = (q_sa - values(logits, q, v_head, learner.cfg)) / advantage_unit(learner.cfg)
    first, after = [], []
    for i, t in enumerate(malformed):
        g = list(t.gen_ids)
        k = next((j for j, p in enumerate(well_formed_prefix) if j >= len(g) or g[j] != p), None)
        k = len(well_formed_prefix) if k is None else k  # the prefix is intact: the move token is off
        if k < len(g):
            first.append(float(adv[i, k]))
            after += [float(adv[i, j]) for j in range(k + 1, len(g))]
    thr = learner.cfg.threshold
    return {
        "first_malformed_token_pass": round(sum(a > thr for a in first) / max(1, len(first)), 3),
        "first_malformed_token_adv": round(sum(first) / max(1, len(first)), 3),
        "later_tokens_pass": round(sum(a > thr for a in after) / max(1, len(after)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a finished NumberLine run made at sampler.temperature=1.0")
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "online_malformed.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    cfg = load_config(str(run / "config.yaml"), [])
    if cfg.sampler.temperature != 1.0:
        raise SystemExit(f"{run} was collected at temperature {cfg.sampler.temperature}; this needs 1.0")
    ckpt = run / "checkpoints" / f"step_{cfg.learner.offline_steps:07d}" / "learner"
    offline = load_turns(str(run / "dataset"))
    online = load_turns(str(run / "replay" / "shard-000"), version=1)
    malformed = [t for t in online if not t.syntax_ok]
    t0 = time.time()
    tok = load_processor(cfg.model.path, cfg.model.text_only).tokenizer
    prefix = text_to_gen_ids(tok, format_action("+"))[:3]  # `{"`, `action`, `":` precede the move
    out: dict = {
        "run": run.name,
        "online_v1_turns": len(online),
        "online_v1_malformed_share": round(len(malformed) / len(online), 3),
        "updates": args.updates,
        "batch": f"{cfg.learner.batch_size // 2} offline + {cfg.learner.batch_size // 2} online turns",
        "threshold": cfg.learner.threshold,
        "eval_episodes": args.eval_episodes,
    }
    for variant in ("all_online_turns", "well_formed_only"):
        learner = Learner(cfg.model, cfg.learner)
        learner.load(ckpt)
        pool = online if variant == "all_online_turns" else [t for t in online if t.syntax_ok]
        rng, half, rows = random.Random(0), cfg.learner.batch_size // 2, []
        for u in range(args.updates + 1):
            if u in (0, 10, args.updates // 2, args.updates):
                row = {"update": u, **filter_pass(learner, malformed[:128], prefix)}
                if u in (args.updates // 2, args.updates):
                    ev = evaluate(learner, args.eval_episodes, cfg.eval.seed)
                    row.update(success=round(ev["success"], 3), syntax=round(ev["syntax"], 3))
                rows.append(row)
                print(variant, row, flush=True)
            if u < args.updates:
                learner.step(rng.sample(offline, half) + rng.sample(pool, half))
        out[variant] = rows
    out["wall_s"] = round(time.time() - t0, 1)
    out["config"] = dataclasses.asdict(cfg.learner)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
