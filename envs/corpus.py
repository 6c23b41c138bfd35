"""Sample prompts and outputs of every env, for training the tiny model's BPE tokenizer.

Deterministic and fast (no rendering, no browser): Gym Cards and BabyAI are played with a fixed-seed
epsilon-expert, MiniWoB prompts come from the static sample in `miniwob_sample.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs.base import Observation
from envs.policies import make_policy, malformed_output

BABYAI_LEVELS = ["GoToLocal", "GoToObj", "GoToRedBall", "PickupLoc", "OpenDoor", "PutNextLocal", "GoToDoor"]
SAMPLE = Path(__file__).with_name("miniwob_sample.json")


def _play(env, episodes: int, rng: np.random.Generator, out: list[str]) -> None:
    """Prompt texts of every obs mode (history on and off) and the outputs of an epsilon-expert."""
    policy = make_policy("epsilon:0.3")
    env.history = 2
    for ep in range(episodes):
        env.obs_mode = "text"
        obs, _ = env.reset(seed=ep)
        history: list[tuple[str, str]] = []
        done = False
        while not done:
            for mode in ("text", "image"):  # "both" has the text of "text"
                env.obs_mode = mode
                o = env.observe(render=False)
                messages, _ = env.prompt(
                    Observation(o.text, None, o.legal_actions), history if ep % 2 else ()
                )
                out.append(messages[-1]["content"][-1]["text"])
            env.obs_mode = "text"
            text = policy.act(obs.legal_actions, env.expert_action(), rng, env.format_action)
            if rng.random() < 0.3:
                action = env.parse_agent(text)
                text = env.format_action(action, thoughts=f"{obs.text} So {action}.")
            out.append(text)
            history.append((obs.text, text))
            obs, _, terminated, truncated, _ = env.step(text)
            done = terminated or truncated
        out.append(obs.text)


def vocab_corpus() -> list[str]:
    from envs import make_env

    rng = np.random.default_rng(0)
    out: list[str] = []
    for env_id, episodes in (("numberline", 30), ("ezpoints", 30), ("points24", 8), ("blackjack", 40)):
        _play(make_env(env_id, obs_mode="text"), episodes, rng, out)
    for level in BABYAI_LEVELS:
        env = make_env(f"babyai:{level}", obs_mode="text", max_steps=12)
        _play(env, 3, rng, out)
        env.close()
    from envs.miniwob import MiniWoBEnv

    for sample in json.loads(SAMPLE.read_text()):
        out.append(MiniWoBEnv.static_prompt(sample["goal"], sample["tree"]))
        for bid in sample["ids"]:
            out.append(MiniWoBEnv.format_click(bid))
    legal = ["-", "+", "stand", "hit", "forward", "click('12')"]
    out.extend(malformed_output(legal, rng) for _ in range(50))
    return out
