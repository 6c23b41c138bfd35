"""The critic against exact values: Q^pi of the data's random policy by dynamic programming, at gamma 0.9.

For NumberLine and Blackjack the state space is small enough to solve exactly:
- NumberLine: (position, target), 30 states. A time-limit truncation bootstraps, as the learner does, so
  the learner's fixed point is the stationary (infinite-horizon) Q^pi, which is what is solved here.
- Blackjack (gymnasium rules, infinite deck): (hard total, holds an ace, dealer's up-card); the dealer's
  final total is enumerated exactly.
EZPoints is left out: a rejected number (one the cards do not hold) is not shown in the prompt but
counts toward the formula cap, so Q^pi is not a function of what the critic sees. `--ceiling --envs
ezpoints` measures how often that hidden count is non-zero on the random data.

Each run trains the learner on 2,000 random-policy episodes with the science-check settings
(benchmarks/numberline_offline.py) and reads Q at the token that names the action, for every legal
action of every probe state (the distinct states of held-out episodes):
- method `sft` (policy evaluation: the actor is SFT on the data, so pi is the behaviour policy): Spearman
  and Pearson correlation and the MAE between exact Q^pi and the critic's Q; the probe is the share of
  states where Q ranks the action that is better under Q^pi first.
- method `afsft` (the critic now serves an improving policy): the probe against the optimal action
  (value iteration), and the share of states where the policy's greedy choice at that token is optimal.

    .venv/bin/python benchmarks/critic_exact.py [--envs numberline blackjack] [--seeds 0 1 2]
        [--methods sft afsft] [--steps 700] [--episodes 2000] [--jobs 2]
        [--out benchmarks/results/critic_exact.json]

A run replaces the records of the (env, method, seed) it runs and keeps the others, so they can be run
a few at a time (each entry records its own episodes and updates). `--jobs 1` trains in this process:
the data is not copied into workers (Blackjack's frames are all distinct, 270 KB each).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numberline_offline import (  # noqa: E402
    BASE_LEARNER,
    BASE_MODEL,
    OBS_MODE,
    answer_heads,
    collect,
    parse_sets,
    train,
)

from envs import make_env  # noqa: E402
from envs.base import format_action  # noqa: E402
from envs.cards import Blackjack  # noqa: E402
from learner.processing import text_to_gen_ids  # noqa: E402
from vlmq.config import EvalConfig, LearnerConfig, ModelConfig  # noqa: E402
from vlmq.tiny_model import build_tiny_model  # noqa: E402

GAMMA = 0.9


# -- exact values ---------------------------------------------------------------------------------
def numberline_q(gamma: float, optimal: bool = False) -> dict:
    """{(pos, goal): {"-": Q, "+": Q}} for the uniform random policy (or the optimal one); each move
    follows the env's own rules (`NumberLine._apply`)."""
    env = make_env("numberline")
    n = env.MAX + 1
    states = [(p, g) for p in range(n) for g in range(n) if p != g]
    moves = {}
    for s in states:
        for a in "-+":
            env.pos, env.goal = s
            r, terminated, _ = env._apply(a)
            moves[s, a] = r, None if terminated else (env.pos, env.goal)
    v = dict.fromkeys(states, 0.0)
    for _ in range(2000):
        qs = {}
        for s in states:
            qs[s] = {}
            for a in "-+":
                r, nxt = moves[s, a]
                qs[s][a] = r + (gamma * v[nxt] if nxt else 0.0)
        v = {s: max(q.values()) if optimal else sum(q.values()) / 2 for s, q in qs.items()}
    return qs


DECK = Blackjack.DECK  # 13 equally likely values, 10 four times


def _total(hard: int, ace: bool) -> int:
    return hard + 10 if ace and hard + 10 <= 21 else hard


@cache
def dealer_final(hard: int, ace: bool) -> dict[int, float]:
    """Distribution of the dealer's final total (22 = bust) from a hand; it hits below 17, soft included."""
    t = _total(hard, ace)
    if t >= 17:
        return {min(t, 22) if hard <= 21 else 22: 1.0}
    out: dict[int, float] = {}
    for c in DECK:
        h = hard + c
        sub = {22: 1.0} if h > 21 else dealer_final(h, ace or c == 1)
        for k, p in sub.items():
            out[k] = out.get(k, 0.0) + p / len(DECK)
    return out


def stand_outcomes(total: int, up: int) -> tuple[float, float]:
    """P(win), P(draw) of standing on `total` against the up-card `up` (the hidden card is drawn now)."""
    win = draw = 0.0
    for c in DECK:
        for d, p in dealer_final(up + c, up == 1 or c == 1).items():
            win += p / len(DECK) if d == 22 or total > d else 0.0
            draw += p / len(DECK) if d == total else 0.0
    return win, draw


def stand_value(total: int, up: int) -> float:
    """E[outcome] of standing on `total` against the up-card `up`: P(win) - P(loss)."""
    win, draw = stand_outcomes(total, up)
    return 2 * win + draw - 1


def blackjack_q(gamma: float, optimal: bool = False) -> dict:
    """{(hard, ace, up): {"stand": Q, "hit": Q}} for hard totals 2-21, by recursion on the total."""

    @cache
    def q(hard: int, ace: bool, up: int) -> tuple[float, float]:
        hit = 0.0
        for c in DECK:
            h = hard + c
            hit += (-1.0 if h > 21 else gamma * v(h, ace or c == 1, up)) / len(DECK)
        return stand_value(_total(hard, ace), up), hit

    def v(hard, ace, up):
        s, h = q(hard, ace, up)
        return max(s, h) if optimal else (s + h) / 2

    return {
        (h, a, u): dict(zip(("stand", "hit"), q(h, a, u)))
        for h in range(2, 22)
        for a in (False, True)
        for u in range(1, 11)
    }


def numberline_key(env) -> tuple:
    return env.pos, env.goal


def blackjack_key(env) -> tuple:
    hand = env.player
    return sum(v for v, _, _ in hand), any(v == 1 for v, _, _ in hand), env.dealer[0][0]


ENVS = {"numberline": (numberline_q, numberline_key), "blackjack": (blackjack_q, blackjack_key)}
VALUES = {"A": 1, "J": 10, "Q": 10, "K": 10}


def text_key(env_id: str, messages: list) -> tuple:
    """The exact-value key of a prompt, read back from the state in words (obs_mode both or text)."""
    text = messages[-1]["content"][-1]["text"]
    if env_id == "numberline":
        goal, pos = re.search(r"Target: (\d)\. Current: (\d)\.", text).groups()
        return int(pos), int(goal)
    up, cards = re.search(r"Dealer shows: (\w+)\. Your cards: ([^(]+) \(", text).groups()
    vals = [VALUES.get(c, int(c) if c.isdigit() else 0) for c in cards.split(", ")]
    return sum(vals), 1 in vals, VALUES.get(up, int(up) if up.isdigit() else 0)


def data_ceiling(env_id: str, turns: list, exact: dict, gamma: float) -> dict:
    """What the dataset itself allows: per (state, action), the mean of its turns' one-step targets
    r + gamma (1 - done) V^pi(s') with the exact V^pi, against the exact Q^pi. A critic that fit its
    targets perfectly on this data would score this."""
    v = {k: sum(q.values()) / len(q) for k, q in exact.items()}
    sums: dict = {}
    for t in turns:
        if not t.syntax_ok:
            continue
        y = t.reward + (0.0 if t.terminated else gamma * v[text_key(env_id, t.next_messages)])
        key = (text_key(env_id, t.messages), t.action)
        n, total = sums.get(key, (0, 0.0))
        sums[key] = (n + 1, total + y)
    pairs = [(exact[k][a], total / n) for (k, a), (n, total) in sums.items()]
    x, y = np.array(pairs).T
    counts = [n for n, _ in sums.values()]
    return {
        "spearman": round(pearson(ranks(x), ranks(y)), 4),
        "pearson": round(pearson(x, y), 4),
        "mae": round(float(np.abs(x - y).mean()), 4),
        "pairs": len(pairs),
        "median_turns_per_pair": float(np.median(counts)),
    }


def ezpoints_hidden_share(episodes: int, seed: int) -> dict:
    """The share of random-policy EZPoints turns taken with rejected numbers counted but not shown."""
    env, rng = make_env("ezpoints", obs_mode="text"), np.random.default_rng(seed)
    turns = hidden = 0
    for e in range(seed, seed + episodes):
        obs, _ = env.reset(seed=e)
        done = False
        while not done:
            turns, hidden = turns + 1, hidden + (env.wasted > 0)
            a = obs.legal_actions[int(rng.integers(len(obs.legal_actions)))]
            obs, _, term, trunc, _ = env.step(format_action(a))
            done = term or trunc
    return {"turns": turns, "hidden_rejections_share": round(hidden / turns, 4)}


def probe_states(env_id: str, episodes: int, seed: int, obs_mode: str) -> list[tuple[tuple, tuple]]:
    """(key, (messages, images)) of each distinct state the random policy visits on held-out episodes."""
    env, rng, states = make_env(env_id, obs_mode=obs_mode), np.random.default_rng(seed), {}
    key_of = ENVS[env_id][1]
    for e in range(seed, seed + episodes):
        obs, _ = env.reset(seed=e)
        done = False
        while not done:
            states.setdefault(key_of(env), env.prompt(obs))
            a = obs.legal_actions[int(rng.integers(len(obs.legal_actions)))]
            obs, _, term, trunc, _ = env.step(format_action(a))
            done = term or trunc
    return sorted(states.items())


# -- the critic's values ----------------------------------------------------------------------------
def critic_values(learner, env_id: str, states: list) -> list[dict]:
    """Q (online and target heads) and the policy's logit at the token that names each legal action,
    per probe state."""
    tok = learner.processor.tokenizer
    actions = make_env(env_id).legal_actions()
    ids = [text_to_gen_ids(tok, format_action(a)) for a in actions]
    k = next(i for i, col in enumerate(zip(*ids)) if len(set(col)) > 1)  # the first token that differs
    out = []
    for key, (messages, images) in states:
        logits, q, q_target = answer_heads(learner, messages, images, ids[0])
        out.append(
            {
                "key": key,
                "q": {a: float(q[k, i[k]]) for a, i in zip(actions, ids)},
                "q_target": {a: float(q_target[k, i[k]]) for a, i in zip(actions, ids)},
                "logit": {a: float(logits[k, i[k]]) for a, i in zip(actions, ids)},
            }
        )
    return out


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank (what Spearman's correlation needs)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def score(values: list[dict], exact: dict, optimal: dict, heads: str = "q") -> dict:
    """Correlations and MAE against exact Q^pi; the probe and the greedy policy against the optimum.
    `heads` "q_target" reads the EMA target heads instead of the online ones."""
    values = [{**v, "q": v[heads]} for v in values]
    pairs = [(exact[v["key"]][a], v["q"][a]) for v in values for a in v["q"]]
    x, y = np.array(pairs).T
    best = lambda d: max(d, key=d.get)  # noqa: E731
    better_pi = [v for v in values if len(set(exact[v["key"]].values())) > 1]  # no ties
    better_opt = [v for v in values if len(set(optimal[v["key"]].values())) > 1]
    return {
        "spearman": round(pearson(ranks(x), ranks(y)), 4),
        "pearson": round(pearson(x, y), 4),
        "mae": round(float(np.abs(x - y).mean()), 4),
        "probe": round(float(np.mean([best(v["q"]) == best(exact[v["key"]]) for v in better_pi])), 4),
        "probe_optimal": round(
            float(np.mean([best(v["q"]) == best(optimal[v["key"]]) for v in better_opt])), 4
        ),
        "greedy_optimal": round(
            float(np.mean([best(v["logit"]) == best(optimal[v["key"]]) for v in better_opt])), 4
        ),
        "states": len(values),
    }


def run_one(job: tuple) -> dict:
    (
        env_id,
        method,
        seed,
        model_cfg,
        learner_kw,
        turns,
        steps,
        probe_episodes,
        obs_mode,
        threads,
        polyak_rate,
        dump,
    ) = job
    torch.set_num_threads(threads)
    t0 = time.time()
    cfg = LearnerConfig(seed=seed, **{**learner_kw, "lr_decay_steps": steps})  # the cosine spans the run
    if method == "sft":  # policy evaluation: pi is SFT on the data, the behaviour policy
        cfg.filter = "none"
    cfg.param_average = polyak_rate  # the learner keeps the average; training is unchanged by it
    learner = train(model_cfg, turns, cfg, steps, log_every=max(1, steps // 5))
    solve = ENVS[env_id][0]
    exact, optimal = solve(cfg.gamma), solve(cfg.gamma, optimal=True)
    states = probe_states(env_id, probe_episodes, EvalConfig().seed, obs_mode)
    values = critic_values(learner, env_id, states)
    out = score(values, exact, optimal)
    metrics = ("spearman", "pearson", "mae", "probe")
    out["target_heads"] = {k: v for k, v in score(values, exact, optimal, "q_target").items() if k in metrics}
    if polyak_rate:  # the same run read through its averaged parameters
        with learner.averaged():
            averaged = score(critic_values(learner, env_id, states), exact, optimal)
        out["polyak"] = {"rate": polyak_rate, **{k: averaged[k] for k in metrics}}
    if dump:  # per (state, action): exact Q^pi and the critic's Q, to see where the errors sit
        out["values"] = [
            {"state": list(v["key"]), "exact": exact[v["key"]], "q": v["q"], "q_target": v["q_target"]}
            for v in values
        ]
    out.update(
        seed=seed,
        episodes=len({t.episode_id for t in turns}),
        obs_mode=obs_mode,
        updates=steps,
        wall_s=round(time.time() - t0, 1),
    )
    print(f"{env_id} {method} seed {seed}: {out}", flush=True)
    return {"env": env_id, "method": method, **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", nargs="+", default=["numberline", "blackjack"])
    ap.add_argument("--methods", nargs="+", default=["sft", "afsft"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--probe-episodes", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "critic_exact.json"))
    ap.add_argument(
        "--polyak",
        type=float,
        default=0.0,
        help="also read Q through the learner's parameter average at this rate (learner.param_average)",
    )
    ap.add_argument("--dump-values", action="store_true", help="record every (state, action)'s Q")
    ap.add_argument("--ceiling", action="store_true", help="only the data ceiling (no training)")
    ap.add_argument("--set", nargs="*", default=[], help="LearnerConfig overrides (ablations), e.g. tau=0.02")
    ap.add_argument(
        "--obs-mode", default=OBS_MODE, help="both (default) | text: no frames, so far more episodes fit"
    )
    args = ap.parse_args()
    learner_kw = {**BASE_LEARNER, **parse_sets(args.set, LearnerConfig)}
    if args.ceiling:
        out = {}
        for env_id in args.envs:
            if env_id == "ezpoints":
                out[env_id] = ezpoints_hidden_share(args.episodes, seed=0)
                continue
            turns, _ = collect(args.episodes, seed=0, env_id=env_id, obs_mode=args.obs_mode)
            out[env_id] = data_ceiling(env_id, turns, ENVS[env_id][0](GAMMA), GAMMA)
        name = "critic_exact_data_ceiling" + (
            "" if args.envs == ["numberline", "blackjack"] else "_" + "_".join(args.envs)
        )
        name += "" if args.episodes == 2000 else f"_{args.episodes // 1000}k"
        name += "" if args.obs_mode == OBS_MODE else f"_{args.obs_mode}"
        path = Path(args.out).with_name(name + ".json")
        record = {"gamma": GAMMA, "episodes": args.episodes, "obs_mode": args.obs_mode, "envs": out}
        path.write_text(json.dumps(record, indent=1))
        print(json.dumps(out, indent=1))
        return
    if learner_kw["gamma"] != GAMMA:
        raise SystemExit(
            f"critic_exact checks gamma {GAMMA}; the learner settings have {learner_kw['gamma']}"
        )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model_cfg = ModelConfig(path=str(build_tiny_model(Path(tmp) / "tiny-vlm", seed=0)), **BASE_MODEL)
        runs = []
        for env_id in args.envs:
            turns, _ = collect(args.episodes, seed=0, env_id=env_id, obs_mode=args.obs_mode)
            print(f"{env_id}: {args.episodes} random episodes, {len(turns)} turns", flush=True)
            threads = 3 - min(args.jobs, 2)
            common = (
                *(model_cfg, learner_kw, turns, args.steps, args.probe_episodes, args.obs_mode, threads),
                *(args.polyak, args.dump_values),
            )
            jobs = [(env_id, m, s, *common) for m in args.methods for s in args.seeds]
            if args.jobs == 1:
                runs += [run_one(j) for j in jobs]
            else:
                import multiprocessing as mp

                with mp.get_context("spawn").Pool(args.jobs) as pool:
                    runs += pool.map(run_one, jobs, chunksize=1)
            del turns, jobs
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {"gamma": GAMMA, "envs": {}}
    if out.get("gamma") != GAMMA:
        raise SystemExit(f"{path} holds gamma {out.get('gamma')}, not {GAMMA}; pass another --out")
    for env_id in args.envs:
        entry = out["envs"].setdefault(env_id, {"seeds": [], "afsft": []})
        for method, key in (("sft", "seeds"), ("afsft", "afsft")):
            new = [r for r in runs if r["env"] == env_id and r["method"] == method]
            kept = [r for r in entry[key] if r["seed"] not in {r["seed"] for r in new}]
            entry[key] = sorted(kept + new, key=lambda r: r["seed"])  # runs replace their (method, seed)
        entry["config"] = {
            "learner": {**learner_kw, "lr_decay_steps": "updates"},
            "model": BASE_MODEL,
            "obs_mode": args.obs_mode,
        }
    for r in runs:
        del r["env"], r["method"]
    out.pop("config", None)
    out.pop("wall_s", None)
    out["note"] = (
        "seeds: policy evaluation (actor SFT on the random data; exact Q^pi of the random policy); "
        "afsft: the probe and the greedy choice against the optimal action; each run records its episodes "
        "and updates (the learning rates' cosine spans the run)"
    )
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
