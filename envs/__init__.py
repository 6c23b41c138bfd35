"""vlmq environments: Gym Cards, BabyAI and MiniWoB++ behind one text-action interface.

    env = envs.make_env("numberline", obs_mode="both")
    obs, info = env.reset(seed=0)
    messages, images = env.prompt(obs)
    obs, reward, terminated, truncated, info = env.step('{"action": "+"}')

The same envs are registered with gymnasium (`gym.make("vlmq/NumberLine-v0")`, `vlmq/BabyAI-v0` with
`level=...`, `vlmq/MiniWoB-v0` with `task=...`) once `envs` is imported.
"""

from __future__ import annotations

import gymnasium as gym

from envs.base import OBS_MODES, EnvCrashed, Observation, VLMEnv, demonstration, format_action, parse_action
from envs.cards import Blackjack, EZPoints, NumberLine, Points24
from vlmq.config import ENV_IDS

CARD_ENVS: dict[str, type[VLMEnv]] = {
    "numberline": NumberLine,
    "ezpoints": EZPoints,
    "points24": Points24,
    "blackjack": Blackjack,
}


def make_env(
    env_id: str,
    obs_mode: str = "both",
    syntax_penalty: float = -1.0,
    history: int = 0,
    max_steps: int = 0,
    demo: int = 0,
    **kwargs,
) -> VLMEnv:
    """An env by id; `kwargs` go to the env (e.g. `view="partial"` for BabyAI, `face_cards_as_10=False`).
    With `demo` N > 0, N worked turns are played on a second env of the same settings; prompts start
    with them (with `example="episode"`, with one of them drawn per episode)."""
    common = dict(obs_mode=obs_mode, syntax_penalty=syntax_penalty, history=history, max_steps=max_steps)
    env = _build(env_id, common, kwargs)
    if demo:
        shown = _build(env_id, common, kwargs)
        try:
            env.demos = demonstration(shown, demo)
        finally:
            shown.close()
    return env


def _build(env_id: str, common: dict, kwargs: dict) -> VLMEnv:
    if env_id in CARD_ENVS:
        return CARD_ENVS[env_id](**common, **kwargs)
    kind, _, name = env_id.partition(":")
    if kind == "babyai" and name:
        from envs.babyai import BabyAIEnv

        return BabyAIEnv(level=name, **common, **kwargs)
    if kind == "miniwob" and name:
        from envs.miniwob import MiniWoBEnv

        return MiniWoBEnv(task=name, **common, **kwargs)
    raise ValueError(f"unknown env id {env_id!r}; valid: {ENV_IDS}")


def env_from_config(e) -> VLMEnv:
    """The env an `env:` config section (vlmq.config.EnvConfig) names, built alike by the runners, the
    driver's probe, the tests and the benchmarks; duck-typed so envs/ does not import the config."""
    return make_env(e.id, e.obs_mode, e.syntax_penalty, e.history, e.max_steps, e.demo, **e.kwargs)


def vocab_corpus() -> list[str]:
    """Prompts and well-formed outputs of every env, to train the tiny model's tokenizer."""
    from envs.corpus import vocab_corpus as build

    return build()


def _gym_entry(env_id: str, **kwargs) -> VLMEnv:
    return make_env(env_id, **kwargs)


def _gym_level(level: str = "GoToLocal", **kwargs) -> VLMEnv:
    return make_env(f"babyai:{level}", **kwargs)


def _gym_task(task: str = "click-test", **kwargs) -> VLMEnv:
    return make_env(f"miniwob:{task}", **kwargs)


for _cls in CARD_ENVS.values():
    _name = f"vlmq/{_cls.__name__}-v0"
    if _name not in gym.registry:
        gym.register(_name, entry_point=_gym_entry, kwargs={"env_id": _cls.env_id})
for _name, _entry in (("vlmq/BabyAI-v0", _gym_level), ("vlmq/MiniWoB-v0", _gym_task)):
    if _name not in gym.registry:
        gym.register(_name, entry_point=_entry)

__all__ = [
    "OBS_MODES",
    "EnvCrashed",
    "Observation",
    "VLMEnv",
    "env_from_config",
    "format_action",
    "make_env",
    "parse_action",
    "vocab_corpus",
]
