"""BabyAI levels (minigrid) behind the VLMEnv interface: mission as text, RGB render as image.

The expert is minigrid's BabyAIBot, kept in step with the actions actually taken (it re-plans from
the agent's real moves, so epsilon-mixed data stays on a sensible plan).
"""

from __future__ import annotations

import contextlib
import io

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI-* levels)
import numpy as np
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT, OBJECT_TO_IDX

from envs.base import VLMEnv

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]
_DIRS = ["east", "south", "west", "north"]
_SKIP_IDX = [OBJECT_TO_IDX[k] for k in ("unseen", "empty", "wall", "floor")]
_DOOR_STATES = {0: "open", 1: "closed", 2: "locked"}


def level_name(level: str) -> str:
    """`GoToLocal`, `BabyAI-GoToLocal` or `BabyAI-GoToLocal-v0` -> the registered gymnasium id."""
    name = level if level.startswith("BabyAI-") else f"BabyAI-{level}"
    return name if name.endswith(("-v0", "-v1")) else f"{name}-v0"


def _describe(obj) -> str:
    if obj.type == "door":
        state = "locked" if obj.is_locked else "open" if obj.is_open else "closed"
        return f"{state} {obj.color} door"
    return f"{obj.color} {obj.type}"


class BabyAIEnv(VLMEnv):
    description = "BabyAI: a grid world. Do what the mission says."
    action_doc = (
        '"left" / "right" (turn), "forward", "pickup" (the object in front), "drop", '
        '"toggle" (open a door or box in front), "done".'
    )
    example_action = "forward"
    max_obs_chars = 4096  # the mission and at most 48 visible objects (about 40 characters each)

    def __init__(self, level: str = "GoToLocal", view: str = "full", tile_size: int = 16, **kw):
        name = level_name(level)
        if name not in gym.registry:
            levels = sorted(k for k in gym.registry if k.startswith("BabyAI-"))
            raise ValueError(f"unknown BabyAI level {level!r}; known: {', '.join(levels)}")
        if view not in ("full", "partial"):
            raise ValueError(f"view {view!r} must be 'full' or 'partial'")
        self.inner = gym.make(name).unwrapped
        self.env_id = f"babyai:{name}"
        self.view, self.tile_size = view, tile_size
        side = self.inner.agent_view_size  # the partial view is side x side cells
        rows, cols = (side, side) if view == "partial" else (self.inner.height, self.inner.width)
        self.frame_shape = (rows * tile_size, cols * tile_size, 3)
        super().__init__(**kw)
        self.reward_total = 0.0

    def _reset(self, options):
        # minigrid keeps its own RNG: seeded when a seed is given, running on otherwise
        with contextlib.redirect_stdout(io.StringIO()):  # "Sampling rejected: ..." noise
            obs, _ = self.inner.reset(seed=self._seed)
        self._view = obs["image"]  # minigrid's encoded 7x7 view: the words are read from it
        self.time_limit = self.inner.max_steps  # the level sets it per episode
        self.reward_total = 0.0
        self._bot = None
        self._pending: list[int] = []  # actions taken since the bot last planned
        self._advice = None

    def reset(self, *, seed=None, options=None):
        self._seed = seed
        return super().reset(seed=seed, options=options)

    def legal_actions(self):
        return ACTIONS

    def parse_env(self, action):
        return ACTIONS.index(super().parse_env(action))

    def _apply(self, action):
        a = self.parse_env(action)
        with contextlib.redirect_stdout(io.StringIO()):
            obs, reward, terminated, truncated, _ = self.inner.step(a)
        self._view = obs["image"]
        self._pending.append(a)
        self._advice = None
        self.reward_total += float(reward)
        return float(reward), bool(terminated), bool(truncated)

    def _obs_text(self, words):
        mission = f"Mission: {self.inner.mission}."
        return f"{mission} {self.state_words()}" if words else mission

    def state_words(self) -> str:
        """What the agent sees, relative to itself: '<thing> <f> ahead <l> left', nearest first."""
        env, view = self.inner, self._view
        size = view.shape[0]
        ax = size // 2
        seen = []
        for i, j in zip(*np.nonzero(~np.isin(view[..., 0], _SKIP_IDX))):
            if (i, j) == (ax, size - 1):  # the agent's own cell shows what it carries
                continue
            kind, color, state = (int(x) for x in view[i, j])
            name = f"{IDX_TO_COLOR[color]} {IDX_TO_OBJECT[kind]}"
            if IDX_TO_OBJECT[kind] == "door":
                name = f"{_DOOR_STATES[state]} {name}"
            f, s = size - 1 - j, i - ax
            where = (f"{f} ahead" if f else "") + (f" {abs(s)} {'right' if s > 0 else 'left'}" if s else "")
            seen.append((f + abs(s), f"{name} {where.strip()}"))
        front = env.grid.get(*env.front_pos)
        parts = [f"You face {_DIRS[env.agent_dir]}."]
        if front is not None and front.type == "wall":
            parts.append("A wall is in front.")
        parts.append(f"You carry {_describe(env.carrying) if env.carrying else 'nothing'}.")
        parts.append("You see: " + ("; ".join(t for _, t in sorted(seen)) if seen else "nothing") + ".")
        return " ".join(parts)

    def render_image(self):
        if self.view == "partial":
            return self.inner.get_frame(tile_size=self.tile_size, agent_pov=True)
        return self.inner.get_frame(highlight=True, tile_size=self.tile_size)

    def expert_action(self):
        if self._advice is None:
            from minigrid.utils.baby_ai_bot import BabyAIBot

            if self._bot is None or len(self._pending) > 1:  # new episode, or the bot missed turns
                self._bot, self._pending = BabyAIBot(self.inner), []
            taken = self._pending[-1] if self._pending else None
            self._pending = []
            try:
                self._advice = ACTIONS[int(self._bot.replan(taken))]
            except Exception:  # the bot gives up on a few states (an opened box); any move is fine
                self._advice = "done"
        return self._advice

    def goal_reached(self):
        return self.reward_total > 0

    def close(self):
        self.inner.close()
