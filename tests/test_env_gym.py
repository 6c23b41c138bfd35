"""Gymnasium conformance of every registered vlmq env: `check_env`, `gym.make` with the passive checker,
standard wrappers, observations that are members of the observation space, and an action space that
holds every well-formed answer."""

from __future__ import annotations

import copy
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

CARD_IDS = ["vlmq/NumberLine-v0", "vlmq/EZPoints-v0", "vlmq/Points24-v0", "vlmq/Blackjack-v0"]


def case(name: str, marks=(), **kwargs):
    words = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return pytest.param(name, kwargs, marks=marks, id=f"{name.removeprefix('vlmq/')}-{words}")


FAST_CASES = [
    *(case(name, obs_mode=mode) for name in CARD_IDS for mode in envs.OBS_MODES),
    case("vlmq/Points24-v0", face_cards_as_10=False),
    *(case("vlmq/BabyAI-v0", obs_mode=mode) for mode in envs.OBS_MODES),
    case("vlmq/BabyAI-v0", level="BossLevel", view="partial", tile_size=8, max_steps=40),
]
CASES = [*FAST_CASES, case("vlmq/MiniWoB-v0", marks=pytest.mark.slow, obs_mode="both")]  # a browser: ~30 s


def test_every_registered_env_is_checked():
    assert {k for k in gym.registry if k.startswith("vlmq/")} == {
        *CARD_IDS,
        "vlmq/BabyAI-v0",
        "vlmq/MiniWoB-v0",
    }


@pytest.mark.parametrize("name, kwargs", CASES)
def test_check_env_passes_without_warnings(name, kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make(name, **kwargs)  # the passive env checker is on
        assert isinstance(env.env, gym.wrappers.PassiveEnvChecker)
        obs, _ = env.reset(seed=0)
        env.step(env.action_space.sample())
        env.render()
        check_env(env.unwrapped)
        inner = env.unwrapped
        obs, _ = inner.reset(seed=1)
        for a in obs.legal_actions:  # the action space holds every well-formed answer
            for answer in (inner.format_action(a), inner.format_action(a, thoughts="Target > Current, so")):
                assert answer in inner.action_space and inner.parse_agent(answer) == a
        env.close()
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


@pytest.mark.parametrize("name, kwargs", FAST_CASES)
def test_every_observation_is_in_the_space(name, kwargs):
    """Random and expert play over many seeds: texts stay within the declared bound and charset, images
    have the declared shape, and `.image` is None exactly when the space has no image."""
    env = gym.make(name, **kwargs).unwrapped
    space = env.observation_space
    assert ("image" in space.spaces) == (env.obs_mode != "text")
    for seed in range(15):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            assert obs in space and isinstance(obs, envs.Observation)
            assert set(obs) == set(space.spaces) and (obs.image is None) == (env.obs_mode == "text")
            text = env.format_action(env.expert_action() or obs.legal_actions[0])
            obs, _, term, trunc, _ = env.step(env.action_space.sample() if seed % 2 else text)
            done = term or trunc
        assert obs in space


def test_observation_is_a_dict_with_attributes():
    env = envs.make_env("numberline", obs_mode="both")
    obs, _ = env.reset(seed=11)
    assert obs["text"] == obs.text == "Target: 1. Current: 0." and obs.legal_actions == ("-", "+")
    assert obs["image"] is obs.image and obs.image.shape == env.frame_shape
    again, *_ = env.step(env.format_action("-"))  # a wall bump: the same picture, cached by the env
    assert np.array_equal(again.image, obs.image) and not np.shares_memory(again.image, obs.image)
    for clone in (copy.deepcopy(obs), pickle.loads(pickle.dumps(obs))):
        assert type(clone) is envs.Observation and clone.text == obs.text
        assert np.array_equal(clone.image, obs.image) and clone.legal_actions == obs.legal_actions
    text_obs, _ = envs.make_env("numberline", obs_mode="text").reset(seed=11)
    assert "image" not in text_obs and text_obs.image is None


def test_action_space_sample_is_a_random_legal_answer():
    env = gym.make("vlmq/Points24-v0", obs_mode="text")
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    samples = [env.action_space.sample() for _ in range(500)]
    assert {env.unwrapped.parse_agent(s) for s in samples} == set(obs.legal_actions)
    assert all(s == env.unwrapped.format_action(env.unwrapped.parse_agent(s)) for s in samples)
    env.action_space.seed(0)
    assert [env.action_space.sample() for _ in range(500)] == samples  # seeded
    chars = env.action_space.sample(mask=(20, None))  # a mask samples characters, as Text does
    assert len(chars) == 20 and chars in env.action_space
    assert "" in env.action_space and "é" not in env.action_space
    assert "x" * (env.unwrapped.max_output_chars + 1) not in env.action_space


def test_standard_wrappers_apply():
    env = gym.wrappers.RecordEpisodeStatistics(
        gym.wrappers.TimeLimit(gym.make("vlmq/NumberLine-v0", obs_mode="text"), max_episode_steps=3)
    )
    obs, _ = env.reset(seed=0)
    assert obs.text == "Target: 3. Current: 5."
    steps = [env.step("no answer") for _ in range(3)]  # syntax errors: -1 each, the state is kept
    assert [(r, term, trunc) for _, r, term, trunc, _ in steps] == [(-1.0, False, False)] * 2 + [
        (-1.0, False, True)
    ]
    info = steps[-1][4]
    assert info["episode"]["r"] == info["episode_return"] == -3.0 and info["episode"]["l"] == 3
    made = gym.make("vlmq/NumberLine-v0", obs_mode="text", max_episode_steps=2)
    made.reset(seed=0)
    assert not made.step("no")[3] and made.step("no")[3]  # the registry's TimeLimit
