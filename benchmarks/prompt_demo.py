"""What worked turns in the prompt (`env.demo`) do to a pretrained model's own outputs ->
benchmarks/results/prompt_demo.json.

SmolLM2-135M-Instruct on NumberLine prompts in words (its chat template, as configs/smollm2_numberline.yaml
plays them). Variants (`--demos`):

- "0", "1", "2": that many worked turns (`env.demo`), then the instructions' own syntax example (`+`);
- "1-": one worked turn showing `-` (demo 2's second);
- "1-ex-": that, with the syntax example showing `-` too, in the worked turn's instructions as well;
- "1-ep": the `+` worked turn, and the syntax example's action drawn per episode from the legal moves;
- "1-ep=": `env.demo: 2` with `env.kwargs.example: episode`, one worked turn drawn per episode and the
  syntax example naming its move.

Per variant, on the first prompt of `--states` seeds, one greedy reply and `--samples` replies at temperature 1 (the dataset's temperature), each read by the env's
parser: syntax accuracy, the share of well-formed moves that are the expert's, and the moves' counts.
A dataset whose moves are all one move gives the critic nothing to compare, whatever its syntax.

    .venv/bin/python benchmarks/prompt_demo.py [--model runs/smollm2] [--states 16 --samples 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envs import make_env  # noqa: E402
from learner.processing import chat_text  # noqa: E402

log = logging.getLogger("prompt_demo")
OUT = REPO / "benchmarks" / "results" / "prompt_demo.json"
VARIANTS = ["0", "1", "2", "1-", "1-ex-", "1-ep", "1-ep="]


def measure(model, tok, demo: str, states: int, samples: int, max_tokens: int) -> dict:
    import torch

    if demo == "1-ep=":
        env = make_env("numberline", "text", demo=2, example="episode")
    else:
        env = make_env("numberline", "text", demo={"0": 0, "1": 1, "1-ep": 1}.get(demo, 2))
    if demo in ("1-", "1-ex-"):
        env.demos = env.demos[1:]
    if demo == "1-ex-":
        env.example_action = "-"
        for m in env.demos[0][1]:
            m["content"][0]["text"] = m["content"][0]["text"].replace('"action": "+"}\n', '"action": "-"}\n')
    greedy_ok = greedy_expert = ok = expert = 0
    moves: Counter = Counter()
    t0 = time.time()
    for seed in range(states):
        obs, _ = env.reset(seed=seed)
        if demo == "1-ep":
            env.example_action = random.Random(seed).choice(sorted(obs.legal_actions))
        messages, _ = env.prompt(obs)
        ids = tok(chat_text(tok, messages), return_tensors="pt", add_special_tokens=False)["input_ids"]
        best = env.expert_action()
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
            s = model.generate(
                ids.repeat(samples, 1),
                max_new_tokens=max_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
            )
        move = env.parse_agent(tok.decode(g[0, ids.shape[1] :], skip_special_tokens=True))
        greedy_ok += move is not None
        greedy_expert += move == best
        for row in s:
            move = env.parse_agent(tok.decode(row[ids.shape[1] :], skip_special_tokens=True))
            if move is not None:
                ok += 1
                expert += move == best
                moves[move] += 1
    n = states * samples
    out = {
        "greedy_syntax": greedy_ok / states,
        "greedy_expert_move": greedy_expert / states,
        "t1_syntax": ok / n,
        "t1_expert_share_of_well_formed": expert / max(ok, 1),
        "t1_moves": dict(moves),
        "prompt_tokens": ids.shape[1],
        "wall_s": round(time.time() - t0, 1),
    }
    log.info("demo %s: %s", demo, out)
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", default=str(REPO / "runs" / "smollm2"), help="`vlmq model smollm2 --out` folder"
    )
    ap.add_argument("--demos", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--states", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    old = json.loads(Path(args.out).read_text())["demo"] if Path(args.out).exists() else {}
    res = {
        **old,
        **{d: measure(model, tok, d, args.states, args.samples, args.max_tokens) for d in args.demos},
    }
    out = {"model": "smollm2-135m", "env": "numberline", "obs_mode": "text", "states": args.states,
           "samples": args.samples, "max_tokens": args.max_tokens, "demo": res}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
