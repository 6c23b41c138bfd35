"""Where AFSFT's weights went on SmolLM2's own NumberLine data: a trained learner checkpoint's
advantages and filter weights per token group -> benchmarks/results/pretrained_probe/<name>.json.

Groups: tokens of well-formed turns (syntax_ok) and of malformed ones, each split into the turn's
first token, its end-of-turn token (EOS, present where the reply ended before max_tokens) and the
rest. A mean weight above 1 on a group of malformed tokens is what the actor is pushed toward.

    .venv/bin/python benchmarks/pretrained_probe.py --run runs/pretrained/smollm2-numberline-afsft_online-s0 --step 150
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from numberline_offline import load_turns  # noqa: E402

from learner.batch import build_batch  # noqa: E402
from learner.losses import filter_weights  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402

OUT = Path(__file__).parent / "results" / "pretrained_probe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--per-group", type=int, default=48, help="well-formed and malformed turns each")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(run / "config.yaml", [])
    learner = Learner(cfg.model, cfg.learner)
    learner.load(run / "checkpoints" / f"step_{args.step:07d}" / "learner")
    learner.model.eval()
    turns = load_turns(cfg.data.path)
    good = [t for t in turns if t.syntax_ok][: args.per_group]
    bad = [t for t in turns if not t.syntax_ok][: args.per_group]
    eos = learner.processor.eos_token_id
    sums: dict[str, list[float]] = {}
    for group, ts in (("well_formed", good), ("malformed", bad)):
        for i in range(0, len(ts), 8):
            batch = build_batch(ts[i : i + 8], learner.processor, learner.cfg)
            s = batch.seqs
            with torch.no_grad():
                logits, q, q_target, v_head = learner.model(
                    s.input_ids, s.attention_mask, s.images, batch.positions
                )
                q_sa = q_target.float().gather(
                    -1, batch.actions[None, ..., None].expand(q_target.shape[0], -1, -1, 1)
                )
                adv = q_sa.squeeze(-1).mean(0) - v_head.float()
                w = filter_weights(adv, learner.cfg)
            first = torch.zeros_like(batch.mask, dtype=torch.bool)
            first[:, 0] = True
            end = (batch.actions == eos) & batch.mask.bool()
            rest = batch.mask.bool() & ~first & ~end
            for part, m in (("first", first & batch.mask.bool()), ("eos", end), ("rest", rest)):
                key = f"{group}/{part}"
                acc = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                acc[0] += float(m.sum())
                acc[1] += float((w * m).sum())
                acc[2] += float((adv * m).sum())
                acc[3] += float((q_sa.squeeze(-1).mean(0) * m).sum())
    out = {
        key: {"tokens": int(n), "mean_weight": sw / n, "mean_adv": sa / n, "mean_q": sq / n}
        for key, (n, sw, sa, sq) in sums.items()
        if n
    }
    out["setup"] = {"run": run.name, "step": args.step, "turns_per_group": args.per_group,
                    "filter": cfg.learner.filter, "beta": cfg.learner.beta, "reward_range": cfg.learner.reward_range}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{run.name}-step{args.step}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
