"""How noisy each env's offline data is: the success, syntax accuracy and episode length of candidate
`data.policy` specs, played through the env runner exactly as `vlmq data collect` plays them, on each
suite config's env settings (text mode: the state is the same, and no frame is rendered or kept).
The suite configs' `data.policy` choices cite these numbers (docs/envs.md, "The suite").
Writes benchmarks/results/data_policies.json.

    .venv/bin/python benchmarks/data_policies.py [--envs ezpoints babyai] [--episodes 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from actors.collect import play  # noqa: E402
from vlmq.config import load_config  # noqa: E402

log = logging.getLogger("data_policies")
POLICIES = {
    "numberline": ["random", "malformed:0.2"],
    "blackjack": ["random", "malformed:0.2", "expert"],
    # habit:<f>:1 is its habit:<f>:<p> data's most frequent move in every state: what SFT would copy
    "ezpoints": ["random", "expert", "epsilon:0.3:0.1", "epsilon:0.5:0.2"]
    + ["habit:0.5:0.7:0.1", "habit:0.5:1", "habit:0.3:0.7:0.1", "habit:0.3:1"],
    "points24": [
        "random",
        "expert",
        "epsilon:0.3:0.1",
        "epsilon:0.5:0.2",
        "habit:0.3:0.7:0.1",
        "habit:0.3:1",
    ],
    "babyai": ["random", "expert", "epsilon:0.5:0.2", "habit:0.3:0.7:0.1", "habit:0.3:1"],
}
OUT = REPO / "benchmarks" / "results" / "data_policies.json"


def measure(env: str, policy: str, episodes: int) -> dict:
    """One policy's episodes on the env's config: success, per-turn syntax accuracy, turns per episode."""
    cfg = load_config(REPO / "configs" / f"{env}.yaml", [f"data.policy={policy}", "env.obs_mode=text"])
    cfg = dataclasses.replace(cfg, runner=dataclasses.replace(cfg.runner, envs_per_runner=8))
    turns, _ = play(cfg, range(cfg.data.seed, cfg.data.seed + episodes))
    ends = [t for t in turns if t.terminated or t.truncated]
    return {
        "episodes": len(ends),
        "success": round(sum(t.success for t in ends) / len(ends), 4),
        "syntax": round(sum(t.syntax_ok for t in turns) / len(turns), 4),
        "turns_per_episode": round(len(turns) / len(ends), 2),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    for env in args.envs:
        out[env] = {p: measure(env, p, args.episodes) for p in POLICIES[env]}
        log.info("%s: %s", env, out[env])
        OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
