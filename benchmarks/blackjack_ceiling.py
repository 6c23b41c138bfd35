"""What win rate each Blackjack policy a gamma-0.9 learner can aim at reaches, computed exactly.

The suite's goal is a win rate (0.40; near-optimal play wins about 0.43), but the learner maximises the
gamma-0.9 return, and on the random data its critic estimates Q^pi of the policy it trains. This gives,
for the env's rules (gymnasium's, infinite deck) and the exact values of benchmarks/critic_exact.py,
the win, draw and loss rates from a fresh deal of:

- `optimal_gamma1`: the policy that maximises the expected outcome (win +1, loss -1), undiscounted;
- `optimal_gamma0.9`: the one that maximises the return the learner is trained on;
- `greedy_q_random_gamma0.9`: greedy on Q of the uniform random policy (the data's), one step of
  policy improvement, what the critic's advantages point to at the start of training;
- `always_stand`, `random` for scale.

It also counts the states where the gamma-0.9 optimum differs from the undiscounted one.

    .venv/bin/python benchmarks/blackjack_ceiling.py [--out benchmarks/results/blackjack_ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from critic_exact import DECK, _total, blackjack_q, stand_outcomes  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "blackjack_ceiling.json"


def rates(policy) -> dict:
    """Win, draw and loss rates of `policy(hard, ace, up) -> P(hit)` from a fresh deal."""

    @cache
    def outcome(hard: int, ace: bool, up: int) -> tuple[float, float]:
        hit_p = policy(hard, ace, up)
        win, draw = stand_outcomes(_total(hard, ace), up)
        win, draw = (1 - hit_p) * win, (1 - hit_p) * draw
        if hit_p:
            for c in DECK:
                h = hard + c
                if h <= 21:
                    w, d = outcome(h, ace or c == 1, up)
                    win, draw = win + hit_p * w / len(DECK), draw + hit_p * d / len(DECK)
        return win, draw

    n = len(DECK) ** 3
    win = draw = 0.0
    for a in DECK:
        for b in DECK:
            for up in DECK:
                w, d = outcome(a + b, a == 1 or b == 1, up)
                win, draw = win + w / n, draw + d / n
    return {"win": round(win, 4), "draw": round(draw, 4), "loss": round(1 - win - draw, 4)}


def greedy(q: dict):
    return lambda hard, ace, up: float(q[hard, ace, up]["hit"] > q[hard, ace, up]["stand"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    opt1, opt09 = blackjack_q(1.0, optimal=True), blackjack_q(0.9, optimal=True)
    policies = {
        "optimal_gamma1": greedy(opt1),
        "optimal_gamma0.9": greedy(opt09),
        "greedy_q_random_gamma0.9": greedy(blackjack_q(0.9)),
        "always_stand": lambda *_: 0.0,
        "random": lambda *_: 0.5,
    }
    out = {name: rates(p) for name, p in policies.items()}
    # the states with a choice: from a hard total of 21 every hit busts
    differ = [k for k in opt1 if greedy(opt1)(*k) != greedy(opt09)(*k) and k[0] <= 20]
    out["states_where_gamma0.9_optimum_differs"] = {
        "count": len(differ),
        "of": sum(1 for k in opt1 if k[0] <= 20),
        "examples": [{"hard": h, "ace": a, "up": u, "gamma1": "hit" if greedy(opt1)(h, a, u) else "stand"}
                     for h, a, u in differ[:12]],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
