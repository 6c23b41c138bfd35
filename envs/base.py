"""The one interface every vlmq env keeps: text in, (image, text) observation out.

`VLMEnv.step` takes the model's raw output. It finds the action itself (`parse_agent`), so a runner,
a scripted policy and a user with `gym.make` all score syntax the same way: an output that names no
legal action, or more than one, costs `syntax_penalty`, leaves the game untouched and still uses up a
turn of the time limit. It is never replaced by a random action.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBS_MODES = ("image", "text", "both")
_ACTION_VALUE = re.compile(r'"action"\s*:\s*(?:"([^"]*)"?|([^,}\n]*))', re.IGNORECASE)


class EnvCrashed(RuntimeError):
    """The env's backend died (a browser). The episode is lost; make a new env to go on."""


@dataclass
class Observation:
    text: str  # the observation part of the prompt (empty for image-only card games)
    image: np.ndarray | None  # (H, W, 3) uint8, None in text mode
    legal_actions: list[str]


def _action_values(text: str) -> list[str]:
    """The value of every `"action":` key: a quoted string (to the closing quote or the end), or bare
    text up to `,`, `}` or a newline."""
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in _ACTION_VALUE.finditer(text)]


def _mentions(value: str, action: str) -> bool:
    """`action` occurs in `value` as a whole token: "1" is not found in "10", "hit" not in "white"."""
    start = 0
    while (i := value.find(action, start)) >= 0:
        j = i + len(action)
        before_ok = i == 0 or not (action[0].isalnum() and value[i - 1].isalnum())
        after_ok = j == len(value) or not (action[-1].isalnum() and value[j].isalnum())
        if before_ok and after_ok:
            return True
        start = i + 1
    return False


def parse_action(text: str, legal_actions: Sequence[str]) -> str | None:
    """The one legal action named after `"action":` in free text (chain of thought allowed), else None.

    Every `"action":` value in the text is read; exactly one distinct legal action must occur in them
    (case-insensitive, as a whole token). Zero or several is a syntax error.
    """
    values = [v.strip().lower() for v in _action_values(text)]
    found = {a for a in legal_actions for v in values if _mentions(v, a.lower())}
    return found.pop() if len(found) == 1 else None


def format_action(action: str, thoughts: str | None = None) -> str:
    """The well-formed answer for `action`, the syntax every prompt shows."""
    out = {"thoughts": thoughts, "action": action} if thoughts else {"action": action}
    return json.dumps(out)


class VLMEnv(gym.Env):
    """Base class: subclasses supply the game (`_reset`, `_apply`, `legal_actions`, `_obs_text`,
    `render_image`, `expert_action`, `goal_reached`) and the prompt text (`description`, `action_doc`,
    `example_action`); this class does parsing, syntax penalties, the time limit, returns and prompts."""

    metadata = {"render_modes": ["rgb_array"]}
    env_id = ""
    description = ""  # the game in a sentence or two
    action_doc = ""  # the legal actions and what they do
    example_action = ""
    time_limit = 10  # turns, syntax errors included; max_steps > 0 overrides it

    def __init__(
        self, obs_mode: str = "both", syntax_penalty: float = -1.0, history: int = 0, max_steps: int = 0
    ):
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode {obs_mode!r} is not one of {list(OBS_MODES)}")
        if history < 0 or max_steps < 0:
            raise ValueError(f"history ({history}) and max_steps ({max_steps}) must be >= 0")
        self.obs_mode = obs_mode
        self.syntax_penalty = float(syntax_penalty)
        self.history = history
        self.max_steps = max_steps  # 0: the game's own `time_limit`
        self.render_mode = "rgb_array"
        self.action_space = spaces.Text(max_length=100_000)
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
        raise NotImplementedError

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
        return parse_action(text, self.legal_actions())

    def format_action(self, action: str, thoughts: str | None = None) -> str:
        return format_action(action, thoughts)

    def observe(self, render: bool = True) -> Observation:
        image = self.render_image() if render and self.obs_mode != "text" else None
        return Observation(self._obs_text(self.obs_mode != "image"), image, self.legal_actions())

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        super().reset(seed=seed)
        self._reset(options)
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
        """Chat messages and images for a turn; the last `self.history` earlier turns are shown as text."""
        parts = [self.instructions()]
        if self.history and history:
            turns = [f"{o} Answer: {a}".strip() for o, a in list(history)[-self.history :]]
            parts.append("Earlier turns:\n" + "\n".join(turns))
        if obs.text:
            parts.append(obs.text)
        content: list[dict] = [{"type": "image"}] if obs.image is not None else []
        content.append({"type": "text", "text": "\n".join(parts)})
        images = [obs.image] if obs.image is not None else []
        return [{"role": "user", "content": content}], images
