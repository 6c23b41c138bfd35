"""MiniWoB++ through browsergym, on the system Chromium: screenshot as image, accessibility tree as text.

Playwright cannot download its own browser here, and browsergym launches two (the task page and a chat
window) with no way to pass the executable to the second, so we wrap the shared Playwright instance's
`chromium.launch` to default `executable_path` to the system Chromium; both launches go through it.
Actions are browsergym strings `click('<bid>')`, checked against the ids in the tree before they reach
the page (browsergym executes action strings as Python). A dead browser raises `EnvCrashed`.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
import shutil
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gymnasium import spaces

from envs.base import PRINTABLE, EnvCrashed, VLMEnv, format_action

# 27 click-style tasks like the paper's: each is solved by clicking elements of the page (click-menu
# is left out: its submenus open on hover, which a click-only agent cannot do).
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
    "unicode-test",
]
_BID = re.compile(r"\[([A-Za-z0-9]+)\]")
_LINE = re.compile(r"\[([A-Za-z0-9]+)\]\s+(\w+)\s+'((?:[^'\\]|\\.)*)'")
_URL = re.compile(r", url='[^']*'")
_FOLDER = re.compile(r"^(\t*)\[\w+\] generic\n\1\[(\w+)\] generic '([^']*)'", re.M)
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d]")
_GOAL_BUDGET = 1000  # characters: goals are a sentence or two; the cut only bounds the observation
_FRAMING = len("Goal: \nPage:\n\n...")  # what `_obs_text` and the tree cut add to the goal and tree


logging.getLogger("browsergym").setLevel(logging.ERROR)  # "Overriding the task's slow_mo" per reset


def _compact(tree: str) -> str:
    """Drop what costs tokens and says nothing (the page URL, text that repeats the line above, nameless
    nodes without an id) and give a text <span> its text, so links made of spans can be named."""
    lines, prev = [], ""
    for line in _URL.sub("", tree).splitlines():
        body = line.strip()
        if body.startswith("InlineTextBox") or (
            not body.startswith("[") and body.endswith(("''", "generic"))
        ):
            continue
        if body.startswith("StaticText "):
            text = body[len("StaticText ") :]
            if text in prev:
                continue
            if lines and re.fullmatch(r"\[\w+\] generic", prev):  # a <span>'s text: name the span
                lines[-1] = f"{lines[-1]} {text}"
                prev = lines[-1].strip()
                continue
        lines.append(line)
        prev = body
    return "\n".join(lines)


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


# Playwright's sync API is bound to the thread that started it, and Ray's threaded actors call methods
# from a pool of threads: every browser call goes through this one thread.
_BROWSER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmq-browser")


def _on_browser_thread(fn, *args):
    return _BROWSER_THREAD.submit(fn, *args).result()


class _KeptBrowser:
    """A launched Chromium that outlives browsergym's `close()`: browsergym closes and relaunches both
    browsers on every reset (about 1 s each); we keep them and let it open fresh contexts instead."""

    def __init__(self, browser):
        self._browser = browser

    def close(self):  # contexts are still closed by browsergym, so pages never leak between episodes
        pass

    def __getattr__(self, name):
        return getattr(self._browser, name)


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` without reading source files: the frames are all Playwright uses."""
    frames, f = [], sys._getframe(1)
    while f is not None:
        frames.append(inspect.FrameInfo(f, f.f_code.co_filename, f.f_lineno, f.f_code.co_name, None, None))
        f = f.f_back
    return frames


def _speed_up_playwright() -> None:
    """Playwright's sync API calls `inspect.stack()` on every call (for error messages); it reads
    source files and made a MiniWoB step take 1 s instead of 0.4 s here. Its modules get a copy of
    `inspect` whose `stack` is `_fast_stack`; the real `inspect` is untouched."""
    import playwright._impl._connection as connection
    import playwright._impl._network as network
    import playwright._impl._sync_base as sync_base

    shim = types.ModuleType("inspect")
    shim.__dict__.update(inspect.__dict__)
    shim.stack = _fast_stack
    for module in (connection, network, sync_base):
        module.inspect = shim


def _use_system_chromium() -> None:
    """Route every browsergym Chromium launch (task page and chat window) to the system browser, and
    reuse a launched browser while it is alive (a dead one is launched again)."""
    from browsergym.core import _get_global_playwright

    chromium = _get_global_playwright().chromium
    if getattr(chromium.launch, "_vlmq", False):
        return
    _speed_up_playwright()
    launch, exe, kept = chromium.launch, chromium_path(), {}

    def patched(**kwargs):
        kwargs.setdefault("executable_path", exe)
        key = repr(sorted(kwargs.items()))
        if key not in kept or not kept[key].is_connected():
            kept[key] = _KeptBrowser(launch(**kwargs))
        return kept[key]

    patched._vlmq = True
    chromium.launch = patched


class AnyText(spaces.Text):
    """A Text space whose members may hold any character (a page's text can: unicode-test), up to
    `max_length`; `charset` is only what `sample` draws from."""

    def contains(self, x) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


class MiniWoBEnv(VLMEnv):
    description = "MiniWoB: a web page. Do what the goal says by clicking page elements."
    action_doc = "click('<id>') clicks the element shown as [<id>] in the page."
    example_action = "click('12')"
    time_limit = 15  # click-checkboxes-large needs up to 13 clicks
    frame_shape = (321, 498, 3)  # browsergym's MiniWoB viewport, 332 x 214, at its zoom of 1.5

    def __init__(self, task: str = "click-test", tree_budget: int = 2000, **kw):
        from browsergym.miniwob import ALL_MINIWOB_TASKS

        known = sorted(t.subdomain for t in ALL_MINIWOB_TASKS)
        if task not in known:
            raise ValueError(f"unknown MiniWoB task {task!r}; known: {', '.join(known)}")
        self.task, self.tree_budget, self.env_id = task, tree_budget, f"miniwob:{task}"
        self.max_obs_chars = _FRAMING + _GOAL_BUDGET + tree_budget
        super().__init__(**kw)
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
            tags_to_mark="all",  # MiniWoB links, pie items and tree nodes are <span>s: give them ids too
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
                _on_browser_thread(self._bg.close)
            except Exception:  # a dead browser cannot be closed cleanly; its processes are gone anyway
                pass
            self._bg = None

    # ---- the game -----------------------------------------------------------------------------
    def _reset(self, options):
        from playwright.sync_api import Error as PlaywrightError

        seed = int(self.np_random.integers(2**31 - 1))
        try:
            if self._bg is None:
                _on_browser_thread(self._start)
            obs, _ = _on_browser_thread(self._bg.reset, seed)
        except PlaywrightError as e:
            raise self._crashed(e) from e
        self._clicked_names: list[str] = []  # what the oracle's clicks (when played) were for
        self._pending_name, self._pending_action = None, None
        self._read(obs)
        self.reward_total = 0.0

    def _read(self, obs: dict) -> None:
        from browsergym.utils.obs import flatten_axtree_to_str

        self.goal = obs["goal"][:_GOAL_BUDGET]
        tree = flatten_axtree_to_str(
            obs["axtree_object"], extra_properties=obs["extra_element_properties"], skip_generic=False
        )
        tree = _compact(tree)
        self.tree = tree if len(tree) <= self.tree_budget else tree[: self.tree_budget] + "\n..."
        self.screenshot = np.ascontiguousarray(obs["screenshot"][..., :3], dtype=np.uint8)
        self.screenshot.flags.writeable = False  # kept until the next step: observe() copies it
        self._actions = [self.format_click_action(b) for b in dict.fromkeys(_BID.findall(self.tree))]

    def legal_actions(self):
        return self._actions

    def _apply(self, action):
        from playwright.sync_api import Error as PlaywrightError

        try:
            obs, reward, terminated, truncated, _ = _on_browser_thread(self._bg.step, action)
        except PlaywrightError as e:
            raise self._crashed(e) from e
        if self._pending_name is not None and action == self._pending_action:
            self._clicked_names.append(self._pending_name)
        self._read(obs)
        self.reward_total += float(reward)
        return float(reward), bool(terminated), bool(truncated)

    def _obs_text(self, words):
        return f"Goal: {self.goal}\nPage:\n{self.tree}"

    def _text_space(self):
        return AnyText(self.max_obs_chars, min_length=0, charset=PRINTABLE)

    def render_image(self):
        return self.screenshot

    def goal_reached(self):
        return self.reward_total > 0

    def expert_action(self):
        """Oracle for pages whose answer is in the text: click the elements the goal names, in order
        (quoted names, 'Select a, b', 'Select a>b>c', 'button ONE', widget roles, 'the 3rd textbox');
        open a tab or section while a target is hidden; then Submit. None when nothing fits (tasks that
        need the picture: colors, shapes, synonyms)."""
        elements = _LINE.findall(self.tree)  # (bid, role, name)
        goal = self.goal.strip()
        targets = _QUOTED.findall(goal)
        if not targets and (m := re.match(r"select (.+?)(?: and (?:click|press) submit)?\.?$", goal, re.I)):
            targets = [t for t in re.split(r",\s*|\s+and\s+|>", m.group(1)) if t]
        targets = targets or re.findall(r"button (\w+)", goal)
        if not targets and (m := re.match(r"click on (.+?)\.?$", goal, re.I)):  # "Click on Tab #2."
            targets = [m.group(1)]
        if m := re.search(r"(\d)(?:st|nd|rd|th) input textbox", goal):
            boxes = [bid for bid, role, _ in elements if role == "textbox"]
            k = int(m.group(1)) - 1
            return self.format_click_action(boxes[k]) if k < len(boxes) else None
        todo = [t for t in targets if t not in self._clicked_names]
        for target in todo[:1]:
            t = target.strip().lower()
            roles = {"x": "", "text": "textbox"}
            for bid, role, name in elements:
                if name.lower() == t or (t == "x" and name.lower() == "close") or role == roles.get(t, t):
                    return self._click(bid, target)
            for bid, _, name in elements:  # hidden: open the next closed tab or section ...
                if "expanded=False" in self._line(bid) and name not in self._clicked_names:
                    return self._click(bid, name)
            for _, bid, name in _FOLDER.findall(self.tree):  # ... or tree folder (a name after its icon)
                if name not in self._clicked_names:
                    return self._click(bid, name)
            return None
        if not targets and "expand" in goal.lower():
            for bid, _, name in elements:
                if "expanded=False" in self._line(bid) and name not in self._clicked_names:
                    return self._click(bid, name)
        for bid, role, name in elements:
            if role == "button" and name.lower() == "submit":
                return self._click(bid, name)
        for role in ("button", "textbox"):  # "Click the button." / "Focus into the textbox."
            hits = [bid for bid, r, _ in elements if r == role]
            if role in goal.lower() and len(hits) == 1:
                return self._click(hits[0], role)
        return None

    def _click(self, bid: str, name: str) -> str:
        self._pending_name, self._pending_action = name, self.format_click_action(bid)
        return self._pending_action  # remembered as done once it is played (see _apply)

    def _line(self, bid: str) -> str:
        return next((ln for ln in self.tree.splitlines() if ln.strip().startswith(f"[{bid}]")), "")

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
