"""Env throughput: steps/s per env with and without rendering (random legal actions, parsing included),
and MiniWoB reset/step latency, and the MiniWoB oracle's success per task. Writes
benchmarks/results/envs.json.

    .venv/bin/python benchmarks/envs.py [--seconds 3] [--miniwob-steps 20] [--oracle-episodes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# this file is named like the `envs` package: import the package, not this script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.policies import make_policy  # noqa: E402

ENV_IDS = ["numberline", "ezpoints", "points24", "blackjack", "babyai:GoToLocal", "babyai:GoToSeq"]


def steps_per_s(env_id: str, obs_mode: str, seconds: float) -> float:
    """Env steps per second of this process's CPU time (resets included) under a random policy.
    CPU time, not wall time: these envs are single-threaded Python, and the machine is shared."""
    env = envs.make_env(env_id, obs_mode=obs_mode)
    policy, rng = make_policy("random"), np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps, ep, start = 0, 0, time.process_time()
    while time.process_time() - start < seconds:
        obs, _, term, trunc, _ = env.step(policy.act(obs.legal_actions, None, rng, env.format_action))
        steps += 1
        if term or trunc:
            ep += 1
            obs, _ = env.reset(seed=ep)
    return steps / (time.process_time() - start)


def miniwob_latency(task: str, steps: int) -> dict:
    """Mean seconds per reset and per step (a click on a random element) on click-style task."""
    env = envs.make_env(f"miniwob:{task}", obs_mode="both")
    rng = np.random.default_rng(0)
    env.reset(seed=0)  # the first reset starts Playwright: not counted
    resets, step_times, n, ep = [], [], 0, 1
    done = True
    while n < steps:
        if done:
            t = time.perf_counter()
            obs, _ = env.reset(seed=ep)
            resets.append(time.perf_counter() - t)
            ep += 1
        action = obs.legal_actions[int(rng.integers(len(obs.legal_actions)))]
        t = time.perf_counter()
        obs, _, term, trunc, _ = env.step(env.format_action(action))
        step_times.append(time.perf_counter() - t)
        done, n = term or trunc, n + 1
    env.close()
    return {"reset_s": float(np.mean(resets)), "step_s": float(np.mean(step_times)), "resets": len(resets)}


def miniwob_oracle(episodes: int) -> dict:
    """Success rate of the MiniWoB oracle (`expert_action`) per task; None-advice turns are no-ops."""
    from envs.miniwob import MINIWOB_TASKS

    rates = {}
    for task in MINIWOB_TASKS:
        env = envs.make_env(f"miniwob:{task}", obs_mode="text")
        wins = 0
        for ep in range(episodes):
            env.reset(seed=ep)
            done = False
            while not done:
                a = env.expert_action()
                _, _, term, trunc, info = env.step(env.format_action(a) if a else "no idea")
                done = term or trunc
            wins += info["goal_reached"]
        env.close()
        rates[task] = round(wins / episodes, 2)
        print(task, rates[task], flush=True)
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of stepping per env and mode")
    ap.add_argument("--miniwob-steps", type=int, default=20)
    ap.add_argument(
        "--oracle-episodes", type=int, default=4, help="MiniWoB oracle episodes per task (0: skip)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "envs.json"))
    args = ap.parse_args()
    results: dict = {}
    for env_id in ENV_IDS:
        results[env_id] = {
            "steps_per_s": round(steps_per_s(env_id, "text", args.seconds), 1),
            "steps_per_s_render": round(steps_per_s(env_id, "both", args.seconds), 1),
        }
        print(env_id, results[env_id], flush=True)
    for task in ("click-test", "click-checkboxes"):
        env_id = f"miniwob:{task}"
        results[env_id] = {k: round(v, 3) for k, v in miniwob_latency(task, args.miniwob_steps).items()}
        results[env_id]["steps_per_s_render"] = round(1.0 / results[env_id]["step_s"], 2)
        print(env_id, results[env_id], flush=True)
    if args.oracle_episodes:
        results["miniwob_oracle_success"] = miniwob_oracle(args.oracle_episodes)
    results["_meta"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "note": "random legal actions, resets included; steps_per_s per CPU second of the benchmark "
        "process (text mode), steps_per_s_render the same in obs_mode both (the image is drawn every "
        "step); MiniWoB: wall-clock seconds (the work is in the browser), it always renders",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
