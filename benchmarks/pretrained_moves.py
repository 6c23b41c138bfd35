"""What an AFSFT run on SmolLM2 changed, move by move -> benchmarks/results/pretrained_moves/<run>.json.

On the first state of each held-out evaluation seed (the prompt the greedy evaluation sees, with the
episode's worked turn and syntax example), for the base model and each checkpoint of a run:

- policy: the probability of the expert's move among the two well-formed answers
  `{"action": "+"}` and `{"action": "-"}` (whole answers, EOS included), and how often the answer
  that copies the prompt's syntax example is the likelier one;
- critic (checkpoints only; the base has random heads): the ensemble-mean Q of the move token in each
  answer, how often the expert's move has the higher Q, and the gap in return units.

A greedy evaluation that does not move while the adapter does is read here: whether the policy's
margin moved toward the expert's move and whether the critic ranks the moves right.

    .venv/bin/python benchmarks/pretrained_moves.py --run runs/pretrained/smollm2-numberline-afsft_online-s0
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envs import env_from_config, format_action  # noqa: E402
from learner.processing import encode_prompt  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402

log = logging.getLogger("pretrained_moves")
OUT = REPO / "benchmarks" / "results" / "pretrained_moves"
EXAMPLE = re.compile(r'"action": "(.+?)"\}')  # the syntax example in the instructions


def states(cfg, n: int) -> list[dict]:
    """The first prompt of eval seeds eval.seed .. eval.seed + n - 1, with its expert and example moves."""
    env = env_from_config(cfg.env)
    out = []
    for seed in range(cfg.eval.seed, cfg.eval.seed + n):
        obs, _ = env.reset(seed=seed)
        messages, _ = env.prompt(obs)
        last = "".join(p["text"] for p in messages[-1]["content"] if p["type"] == "text")
        example = EXAMPLE.search(last)
        if example is None:
            raise ValueError(f"{cfg.env.id}: the prompt of seed {seed} has no syntax example naming a move")
        out.append({"messages": messages, "expert": env.expert_action(), "example": example.group(1)})
    return out


@torch.no_grad()
def probe(model, tok, rows: list[dict], moves: list[str], critic: bool) -> dict:
    """Per state: log-probs of each move's whole answer; Q of its first token that differs."""
    answers = [
        tok(format_action(m), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for m in moves
    ]
    first = next(i for i in range(min(map(len, answers))) if len({a[i] for a in answers}) > 1)
    p_expert, copy_likelier, q_right, q_gap = [], [], [], []
    for r in rows:
        prompt = encode_prompt(tok, r["messages"])["input_ids"]
        logp, q = [], []
        for a in answers:
            ids = torch.tensor([prompt + a])
            pos = torch.arange(len(prompt) - 1, len(prompt) + len(a) - 1)[None]
            logits, qs, _, _ = model(ids, torch.ones_like(ids), {}, pos)
            lp = torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(a)[:, None]).sum()
            logp.append(float(lp))
            q.append(float(qs.mean(0)[0, first, a[first]]))
        p = torch.softmax(torch.tensor(logp), 0)
        e, c = moves.index(r["expert"]), moves.index(r["example"])
        p_expert.append(float(p[e]))
        copy_likelier.append(float(p[c] > 0.5))
        if critic:
            q_right.append(float(q[e] > q[1 - e]))
            q_gap.append(q[e] - q[1 - e])
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {
        "p_expert_move": mean(p_expert),
        "greedy_of_two_expert": mean([float(x > 0.5) for x in p_expert]),
        "copy_likelier": mean(copy_likelier),
        "critic_ranks_expert": mean(q_right),
        "critic_gap_expert_minus_other": mean(q_gap),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a run folder (config.yaml, checkpoints/step_*)")
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--out", default=None, help=f"default: {OUT.relative_to(REPO)}/<run folder name>.json")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(run / "config.yaml", [])
    torch.set_num_threads(cfg.learner.num_cpus)
    rows = states(cfg, args.states)
    moves = sorted({r["expert"] for r in rows} | {r["example"] for r in rows})
    if len(moves) != 2:
        raise ValueError(f"the probe compares two moves; these states have {moves}")
    learner = Learner(cfg.model, cfg.learner)
    model, tok = learner.model.eval(), learner.processor
    result = {"run": str(run), "states": len(rows), "moves": moves,
              "expert_is_example": sum(r["expert"] == r["example"] for r in rows) / len(rows),
              "base": probe(model, tok, rows, moves, critic=False)}  # fmt: skip
    log.info("base: %s", result["base"])
    for ckpt in sorted((run / "checkpoints").glob("step_*")):
        learner.load(ckpt / "learner")
        result[ckpt.name] = probe(model, tok, rows, moves, critic=True)
        log.info("%s: %s", ckpt.name, result[ckpt.name])
    out = Path(args.out) if args.out else OUT / f"{run.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
