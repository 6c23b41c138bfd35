"""Every env's dataset, with every dataset policy, replays exactly: a fresh env reset with an episode's
seed and stepped with its stored output texts gives the stored rewards, ends and next prompts."""

from __future__ import annotations

import pytest

import envs
from actors.collect import play
from vlmq.config import load_config

POLICIES = ["random", "expert", "epsilon:0.3:0.2", "habit:0.5:0.7:0.1", "malformed:0.3"]
ENVS = [
    "numberline",
    "blackjack",
    "ezpoints",
    "points24",
    "babyai:GoToLocal",
    pytest.param("miniwob:click-button", marks=pytest.mark.slow),  # a browser per env
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("env_id", ENVS)
def test_collected_turns_replay_exactly_in_a_fresh_env(env_id, policy):
    cfg = load_config(
        None,
        [f"env.id={env_id}", "env.obs_mode=text", "env.history=1", "env.max_steps=6", f"data.policy={policy}"]
        + ["runner.envs_per_runner=2"],
    )
    turns, stats = play(cfg, range(3), rng_seed=7)
    assert stats["crashes"] == 0 and turns
    env = envs.env_from_config(cfg.env)
    try:
        episodes: dict[str, list] = {}
        for t in turns:
            episodes.setdefault(t.episode_id, []).append(t)
        assert len(episodes) == 3
        for ep in episodes.values():
            ep.sort(key=lambda t: t.turn_index)
            obs, _ = env.reset(seed=ep[0].seed)
            for t in ep:
                assert obs.text in t.messages[0]["content"][-1]["text"], (t.episode_id, t.turn_index)
                obs, reward, terminated, truncated, info = env.step(t.action_text)
                got = (reward, terminated, truncated, info["syntax_ok"])
                assert got == (t.reward, t.terminated, t.truncated, t.syntax_ok), (t.episode_id, t.turn_index)
            assert ep[-1].terminated or ep[-1].truncated  # whole episodes only
    finally:
        env.close()


def test_a_habit_is_the_same_wrong_move_wherever_its_state_recurs():
    """Through the runner and the scripted backend: habit:1:1 plays one move per prompt, never the expert's."""
    cfg = load_config(
        None, ["env.id=numberline", "env.obs_mode=text", "env.history=0", "data.policy=habit:1:1"]
    )
    turns, _ = play(cfg, range(40), rng_seed=3)
    moves: dict[str, set[str]] = {}
    for t in turns:
        moves.setdefault(t.messages[0]["content"][-1]["text"], set()).add(t.action_text)
    assert len(moves) > 10 and sum(len(m) for m in moves.values()) == len(moves)
    env = envs.make_env("numberline", obs_mode="text")
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        text = next(t.action_text for t in turns if t.seed == seed and t.turn_index == 0)
        assert env.parse_agent(text) != env.expert_action()
