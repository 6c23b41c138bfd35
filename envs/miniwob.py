"""MiniWoB++ through browsergym, on the system Chromium: screenshot as image, accessibility tree as text.

Playwright cannot download its own browser here, and browsergym launches two (the task page and a chat
window) with no way to pass the executable to the second, so we wrap the shared Playwright instance's
`chromium.launch` to default `executable_path` to the system Chromium; both launches go through it.
Actions are browsergym strings `click('<bid>')`, checked against the ids in the tree before they reach
the page (browsergym executes action strings as Python). A dead browser raises `EnvCrashed`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from envs.base import EnvCrashed, VLMEnv, format_action

# 27 click-style tasks like the paper's: each is solved by clicking elements of the page.
MINIWOB_TASKS = [
    "click-button",
    "click-button-sequence",
    "click-checkboxes",
    "click-checkboxes-large",
    "click-checkboxes-soft",
    "click-checkboxes-transfer",
    "click-collapsible",
    "click-collapsible-2",
    "click-color",
    "click-dialog",
    "click-dialog-2",
    "click-link",
    "click-menu",
    "click-option",
    "click-pie",
    "click-shades",
    "click-shape",
    "click-tab",
    "click-tab-2",
    "click-tab-2-hard",
    "click-test",
    "click-test-2",
    "click-widget",
    "focus-text",
    "focus-text-2",
    "identify-shape",
    "navigate-tree",
]
_BID = re.compile(r"\[([A-Za-z0-9]+)\]")
_LINE = re.compile(r"\[([A-Za-z0-9]+)\]\s+(\w+)\s+'((?:[^'\\]|\\.)*)'")
_URL = re.compile(r", url='[^']*'")
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d]")


logging.getLogger("browsergym").setLevel(logging.ERROR)  # "Overriding the task's slow_mo" per reset


def miniwob_url() -> str:
    """file:// URL of the MiniWoB++ pages shipped in the `miniwob` wheel (no server, no download)."""
    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MiniWoB needs the `miniwob` package: pip install -e '.[browser]'")
    root = Path(next(iter(spec.submodule_search_locations))) / "html" / "miniwob"
    return f"file://{root}/"


def chromium_path() -> str:
    """The system Chromium ($VLMQ_CHROMIUM, else `chromium` / `chromium-browser` on PATH)."""
    for cand in (os.environ.get("VLMQ_CHROMIUM"), "chromium", "chromium-browser"):
        if cand and (path := shutil.which(cand)):
            return path
    raise RuntimeError("MiniWoB needs a system Chromium: apt-get install -y chromium (or set VLMQ_CHROMIUM)")


def _use_system_chromium() -> None:
    """Route every browsergym Chromium launch (task page and chat window) to the system browser."""
    from browsergym.core import _get_global_playwright

    chromium = _get_global_playwright().chromium
    if getattr(chromium.launch, "_vlmq", False):
        return
    launch, exe = chromium.launch, chromium_path()

    def patched(**kwargs):
        kwargs.setdefault("executable_path", exe)
        return launch(**kwargs)

    patched._vlmq = True
    chromium.launch = patched


class MiniWoBEnv(VLMEnv):
    description = "MiniWoB: a web page. Do what the goal says by clicking page elements."
    action_doc = "click('<id>') clicks the element shown as [<id>] in the page."
    example_action = "click('12')"
    time_limit = 10

    def __init__(self, task: str = "click-test", tree_budget: int = 1500, **kw):
        from browsergym.miniwob import ALL_MINIWOB_TASKS

        known = sorted(t.subdomain for t in ALL_MINIWOB_TASKS)
        if task not in known:
            raise ValueError(f"unknown MiniWoB task {task!r}; known: {', '.join(known)}")
        super().__init__(**kw)
        self.task, self.tree_budget, self.env_id = task, tree_budget, f"miniwob:{task}"
        self._bg = None  # the browsergym env, started on the first reset
        self.goal, self.tree, self.screenshot, self._actions = "", "", None, []

    # ---- browser lifecycle --------------------------------------------------------------------
    def _start(self):
        import browsergym.miniwob  # noqa: F401  (registers browsergym/miniwob.*)
        import gymnasium as gym

        os.environ.setdefault("MINIWOB_URL", miniwob_url())
        _use_system_chromium()
        self._bg = gym.make(
            f"browsergym/miniwob.{self.task}",
            headless=True,
            slow_mo=0,
            pre_observation_delay=0.0,
            pw_chromium_kwargs={"executable_path": chromium_path()},
            disable_env_checker=True,
        ).unwrapped

    def _crashed(self, err: Exception) -> EnvCrashed:
        self.close()
        return EnvCrashed(f"{self.env_id}: the browser died ({type(err).__name__}: {err}); make a new env")

    def close(self):
        if self._bg is not None:
            try:
                self._bg.close()
            except Exception:  # a dead browser cannot be closed cleanly; its processes are gone anyway
                pass
            self._bg = None

    # ---- the game -----------------------------------------------------------------------------
    def _reset(self, options):
        from playwright.sync_api import Error as PlaywrightError

        if self._bg is None:
            self._start()
        seed = int(self.np_random.integers(2**31 - 1))
        try:
            obs, _ = self._bg.reset(seed=seed)
        except PlaywrightError as e:
            raise self._crashed(e) from e
        self._clicked: list[str] = []
        self._read(obs)
        self.reward_total = 0.0

    def _read(self, obs: dict) -> None:
        from browsergym.utils.obs import flatten_axtree_to_str

        self.goal = obs["goal"]
        tree = flatten_axtree_to_str(obs["axtree_object"], extra_properties=obs["extra_element_properties"])
        tree = _URL.sub("", "\n".join(ln for ln in tree.splitlines() if "InlineTextBox" not in ln))
        self.tree = tree if len(tree) <= self.tree_budget else tree[: self.tree_budget] + "\n..."
        self.screenshot = np.ascontiguousarray(obs["screenshot"][..., :3], dtype=np.uint8)
        self._actions = [self.format_click_action(b) for b in dict.fromkeys(_BID.findall(self.tree))]

    def legal_actions(self):
        return self._actions

    def _apply(self, action):
        from playwright.sync_api import Error as PlaywrightError

        try:
            obs, reward, terminated, truncated, _ = self._bg.step(action)
        except PlaywrightError as e:
            raise self._crashed(e) from e
        self._clicked.append(action)
        self._read(obs)
        self.reward_total += float(reward)
        return float(reward), bool(terminated), bool(truncated)

    def _obs_text(self, words):
        return f"Goal: {self.goal}\nPage:\n{self.tree}"

    def render_image(self):
        return self.screenshot

    def goal_reached(self):
        return self.reward_total > 0

    def expert_action(self):
        """Oracle for pages whose answer is readable: click the elements the goal names (quoted, or
        after 'Click'/'Select'), in order, then Submit if the page has one. None when nothing matches."""
        elements = [(bid, role, name) for bid, role, name in _LINE.findall(self.tree)]
        targets = _QUOTED.findall(self.goal)
        if not targets:
            m = re.search(
                r"(?:click|select)(?: on)?(?: the)? (.+?)(?: and click submit)?\.?$", self.goal, re.I
            )
            targets = [t.strip() for t in re.split(r",\s*|\s+and\s+", m.group(1))] if m else []
        for target in targets:
            for bid, _, name in elements:
                action = self.format_click_action(bid)
                if name.strip().lower() == target.strip().lower() and action not in self._clicked:
                    if action in self._actions:
                        return action
        for bid, role, name in elements:
            if role == "button" and name.lower() == "submit":
                return self.format_click_action(bid)
        for role in ("button", "link", "textbox", "checkbox"):  # "Click the button." with one button
            hits = [bid for bid, r, _ in elements if r == role]
            if role in self.goal.lower() and len(hits) == 1:
                return self.format_click_action(hits[0])
        return None

    # ---- static helpers (the vocab corpus uses them without a browser) -------------------------
    @staticmethod
    def format_click_action(bid: str) -> str:
        return f"click('{bid}')"

    @classmethod
    def format_click(cls, bid: str) -> str:
        return format_action(cls.format_click_action(bid))

    @classmethod
    def static_prompt(cls, goal: str, tree: str) -> str:
        return f"{cls.description}\nActions: {cls.action_doc}\n" + (
            f'Answer in JSON: {{"thoughts": "...", "action": "{cls.example_action}"}}\nGoal: {goal}\nPage:\n{tree}'
        )
