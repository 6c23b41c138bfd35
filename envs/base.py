"""The one interface every vlmq env keeps: text in, (image, text) observation out.

`VLMEnv.step` takes the model's raw output. It finds the action itself (`parse_agent`), so a runner,
a scripted policy and a user with `gym.make` all score syntax the same way: an output that does not
name one legal action exactly (the parsing rule in docs/envs.md) costs `syntax_penalty`, leaves the
game untouched and still uses up a turn of the time limit. It is never replaced by a random action.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBS_MODES = ("image", "text", "both")
MAX_OUTPUT_CHARS = 4096  # default bound on an output: longer ones are malformed unread
# Printable ASCII: letters, digits, punctuation (JSON, operators, quotes, braces) and whitespace. All
# that `format_action` writes (json.dumps escapes the rest), every legal action and the card games' and
# BabyAI's observation text.
PRINTABLE = string.printable
_ACTION_KEY = re.compile(r'"action"\s*:\s*', re.IGNORECASE)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)  # a JSON string literal, closing quote included
_BARE = re.compile(r"([^,}\n]*)[,}\n]")  # bare text, ended by `,`, `}` or a newline
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class EnvCrashed(RuntimeError):
    """The env's backend died (a browser). The episode is lost; make a new env to go on."""


class Observation(dict):
    """What `reset` and `step` return: a dict with the keys of the env's observation space ("text",
    "legal_actions", and "image" unless obs_mode is "text"), so it is a member of that space; the
    keys read as attributes too, and `.image` is None where there is no image."""

    __slots__ = ()

    def __init__(self, text: str, image: np.ndarray | None, legal_actions: Sequence[str]):
        super().__init__(text=text, legal_actions=tuple(legal_actions))
        if image is not None:
            self["image"] = image

    @property
    def text(self) -> str:  # the observation part of the prompt (empty for image-only card games)
        return self["text"]

    @property
    def image(self) -> np.ndarray | None:  # (H, W, 3) uint8, None in text mode
        return self.get("image")

    @property
    def legal_actions(self) -> tuple[str, ...]:
        return self["legal_actions"]


class AnswerSpace(spaces.Text):
    """The action space: any output of at most the env's `max_output_chars` printable ASCII characters
    (the empty output included). `sample()` is the well-formed answer for a uniformly random legal
    action of the latest observation (the env keeps `legal_actions` current), so a random agent plays
    the game instead of making syntax errors; with a mask or probability it samples characters as
    `Text` does."""

    def __init__(self, max_length: int, seed: int | None = None):
        super().__init__(max_length, min_length=0, charset=PRINTABLE, seed=seed)
        self.legal_actions: tuple[str, ...] = ()

    def sample(self, mask=None, probability=None) -> str:
        if mask is not None or probability is not None or not self.legal_actions:
            return super().sample(mask=mask, probability=probability)
        return format_action(self.legal_actions[int(self.np_random.integers(len(self.legal_actions)))])


def _action_value(text: str) -> str | None:
    """The value of the last `"action":` key: a JSON string (decoded) or bare text ended by `,`, `}` or
    a newline; None when the value is unterminated (cut off) or not a valid JSON string."""
    keys = list(_ACTION_KEY.finditer(text))
    if not keys:
        return None
    start = keys[-1].end()
    if text.startswith('"', start):
        if (m := _QUOTED.match(text, start)) is None:
            return None
        try:
            return json.loads(f'"{m.group(1)}"', strict=False)
        except json.JSONDecodeError:  # a bad escape such as \q
            return None
    m = _BARE.match(text, start)
    return m.group(1) if m else None


def parse_action(text: str, legal_actions: Sequence[str], max_chars: int = MAX_OUTPUT_CHARS) -> str | None:
    """The legal action that the last `"action":` value names exactly, else None (a syntax error).

    An output longer than `max_chars` is malformed unread. The value must be terminated, and equal one
    legal action after removing surrounding ASCII whitespace, ignoring ASCII case only. Chain of
    thought before it and other keys ("thoughts") are ignored. The rule is in docs/envs.md.
    """
    if len(text) > max_chars or (value := _action_value(text)) is None:
        return None
    value = value.strip(string.whitespace)
    if value in legal_actions:
        return value
    folded = value.translate(_ASCII_LOWER)
    hits = [a for a in legal_actions if a.translate(_ASCII_LOWER) == folded]
    return hits[0] if len(hits) == 1 else None


def format_action(action: str, thoughts: str | None = None) -> str:
    """The well-formed answer for `action`, the syntax every prompt shows."""
    out = {"thoughts": thoughts, "action": action} if thoughts else {"action": action}
    return json.dumps(out)


DEMO_SEED = 10_000  # the first demonstration state: worked examples, below the evaluation seeds (eval.seed)


def demonstration(env: VLMEnv, turns: int) -> list[tuple[str, list[dict]]]:
    """`turns` worked turns to put before prompts, as (move, messages): the expert answering fixed
    states, each a user message (its words; no image) and the assistant's well-formed answer. A
    pretrained model copies a shown answer's format far more often than it follows a described one,
    and it copies the shown move as readily, so the moves differ (docs/models.md). States are the
    first seeds from DEMO_SEED with a new move."""
    shown: list[tuple[str, list[dict]]] = []
    for seed in range(DEMO_SEED, DEMO_SEED + 1000):
        if len(shown) == turns:
            return shown
        obs, _ = env.reset(seed=seed)
        action = env.expert_action()
        if action is None or action in {move for move, _ in shown}:
            continue
        text = env.prompt(obs)[0][-1]["content"][-1]["text"]
        answer = env.format_action(action)
        shown.append(
            (
                action,
                [
                    {"role": "user", "content": [{"type": "text", "text": text}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
            )
        )
    raise ValueError(
        f"{env.env_id}: the expert showed {len(shown)} distinct moves in 1,000 states, not {turns}"
    )


class VLMEnv(gym.Env):
    """Base class: subclasses supply the game (`_reset`, `_apply`, `legal_actions`, `_obs_text`,
    `render_image`, `expert_action`, `goal_reached`) and the prompt text (`description`, `action_doc`,
    `example_action`); this class does parsing, syntax penalties, the time limit, returns and prompts."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    env_id = ""
    description = ""  # the game in a sentence or two
    action_doc = ""  # the legal actions and what they do
    example_action = ""
    time_limit = 10  # turns, syntax errors included; max_steps > 0 overrides it
    demos: list[tuple[str, list[dict]]] = []  # worked turns (`demonstration`); make_env(demo=N) sets them
    demo: list[dict] = []  # the messages put before this episode's prompts
    max_output_chars = MAX_OUTPUT_CHARS  # a longer output is a syntax error, unread
    # set by every env (before `VLMEnv.__init__`, which builds the observation space from them):
    frame_shape: tuple[int, int, int]  # (H, W, 3) of every rendered image
    max_obs_chars: int  # the longest observation text

    def __init__(
        self,
        obs_mode: str = "both",
        syntax_penalty: float = -1.0,
        history: int = 0,
        max_steps: int = 0,
        render_mode: str | None = "rgb_array",
        example: str = "fixed",
    ):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode {obs_mode!r} is not one of {list(OBS_MODES)}")
        if history < 0 or max_steps < 0:
            raise ValueError(f"history ({history}) and max_steps ({max_steps}) must be >= 0")
        if example not in ("fixed", "episode"):
            raise ValueError(f"example {example!r} must be 'fixed' or 'episode'")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.obs_mode = obs_mode  # fixed: the observation space depends on it
        self.syntax_penalty = float(syntax_penalty)
        self.history = history
        self.max_steps = max_steps  # 0: the game's own `time_limit`
        self.render_mode = render_mode  # render() returns the frame either way
        # "fixed": every worked turn, then the env's own syntax example. "episode": one worked turn drawn
        # per episode, and the example names its move (with no worked turns, a move drawn from the first
        # state's legal actions). A pretrained model copies the shown move (docs/models.md)
        self.example = example
        self.action_space = AnswerSpace(self.max_output_chars)
        self.observation_space = self._observation_space()
        self._t = 0
        self._return = 0.0
        self._done = True

    # ---- subclass hooks -------------------------------------------------------------------
    def _reset(self, options: dict | None) -> None:
        raise NotImplementedError

    def _apply(self, action: str) -> tuple[float, bool, bool]:
        """Play a legal action: (reward, terminated, truncated by the game's own rule)."""
        raise NotImplementedError

    def legal_actions(self) -> list[str]:
        raise NotImplementedError

    def _obs_text(self, words: bool) -> str:
        """The observation text; `words` adds the state in words (text and both modes)."""
        raise NotImplementedError

    def render_image(self) -> np.ndarray:
        """The frame, `frame_shape` uint8: a new array, or a read-only one the env keeps (a cache)."""
        raise NotImplementedError

    def _text_space(self) -> spaces.Text:
        return spaces.Text(self.max_obs_chars, min_length=0, charset=PRINTABLE)

    def expert_action(self) -> str | None:
        """The scripted expert's legal action in the current state."""
        raise NotImplementedError

    def goal_reached(self) -> bool:
        raise NotImplementedError

    def parse_env(self, action: str) -> Any:
        """A legal action string to the backend's action; the identity where the game speaks strings."""
        if action not in self.legal_actions():
            raise ValueError(f"{action!r} is not a legal action of {self.env_id}: {self.legal_actions()}")
        return action

    # ---- the interface ----------------------------------------------------------------------
    def parse_agent(self, text: str) -> str | None:
        return parse_action(text, self.legal_actions(), self.max_output_chars)

    def format_action(self, action: str, thoughts: str | None = None) -> str:
        return format_action(action, thoughts)

    def _observation_space(self) -> spaces.Dict:
        parts = {
            "text": self._text_space(),
            "legal_actions": spaces.Sequence(spaces.Text(self.max_output_chars, charset=PRINTABLE)),
        }
        if self.obs_mode != "text":
            parts["image"] = spaces.Box(0, 255, self.frame_shape, np.uint8)
        return spaces.Dict(parts)

    def observe(self, render: bool = True) -> Observation:
        """The current observation. It owns its image (a kept frame is copied: users keep observations)
        and it sets the legal actions that `action_space.sample()` draws from."""
        image = None
        if render and self.obs_mode != "text":
            image = self.render_image()
            if not image.flags.writeable:
                image = image.copy()
        obs = Observation(self._obs_text(self.obs_mode != "image"), image, self.legal_actions())
        self.action_space.legal_actions = obs.legal_actions
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        super().reset(seed=seed)
        self._reset(options)
        if self.example == "fixed":
            self.demo = [m for _, turn in self.demos for m in turn]
        else:  # its own generator: the game's draws stay those of the seed
            rng = random.Random(seed)
            if self.demos:
                self.example_action, self.demo = rng.choice(self.demos)
            else:
                self.example_action = rng.choice(sorted(self.legal_actions()))
        self._t, self._return, self._done = 0, 0.0, False
        info = {
            "success": False,
            "syntax_ok": True,
            "action": None,
            "goal_reached": False,
            "episode_return": 0.0,
        }
        return self.observe(), info

    def step(self, text: str) -> tuple[Observation, float, bool, bool, dict]:
        if self._done:
            raise RuntimeError(f"{self.env_id}: the episode is over (or never started); call reset()")
        if not isinstance(text, str):
            raise TypeError(f"{self.env_id}: step() takes the model's output text, got {type(text).__name__}")
        action = self.parse_agent(text)
        self._t += 1
        if action is None:
            reward, terminated, truncated = self.syntax_penalty, False, False
        else:
            reward, terminated, truncated = self._apply(action)
        truncated = not terminated and (truncated or self._t >= (self.max_steps or self.time_limit))
        self._return += reward
        self._done = terminated or truncated
        info = {
            "success": self._return > 0,
            "syntax_ok": action is not None,
            "action": action,
            "goal_reached": self.goal_reached(),
            "episode_return": self._return,
        }
        return self.observe(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        return self.render_image()

    def instructions(self) -> str:
        return (
            f"{self.description}\nActions: {self.action_doc}\n"
            f'Answer in JSON: {{"thoughts": "...", "action": "{self.example_action}"}}'
        )

    def prompt(self, obs: Observation, history: Sequence[tuple[str, str]] = ()) -> tuple[list[dict], list]:
        """Chat messages and images for a turn, after `self.demo` if set; the last `self.history` earlier
        turns are shown as text."""
        parts = [self.instructions()]
        if self.history and history:
            turns = [f"{o} Answer: {a}".strip() for o, a in list(history)[-self.history :]]
            parts.append("Earlier turns:\n" + "\n".join(turns))
        if obs.text:
            parts.append(obs.text)
        content: list[dict] = [{"type": "image"}] if obs.image is not None else []
        content.append({"type": "text", "text": "\n".join(parts)})
        images = [obs.image] if obs.image is not None else []
        return [*self.demo, {"role": "user", "content": content}], images
