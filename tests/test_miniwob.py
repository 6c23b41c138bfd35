"""MiniWoB++ on headless system Chromium: click-test solved by id, actions validated, a dead browser
reported as envs.EnvCrashed (and the env usable again after a reset)."""

from __future__ import annotations

import os
import re
import signal
import threading

import gymnasium as gym
import psutil
import pytest

import envs
from envs.miniwob import MINIWOB_TASKS, MiniWoBEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    e = envs.make_env("miniwob:click-test", obs_mode="both")
    yield e
    e.close()


def test_click_test_solved_by_element_id(env):
    obs, _ = env.reset(seed=0)
    assert obs.text.startswith("Goal: Click the button.\nPage:")
    assert obs.image.ndim == 3 and obs.image.shape[2] == 3 and obs.image.dtype.name == "uint8"
    bid = re.search(r"\[(\w+)\] button 'Click Me!'", obs.text).group(1)
    assert f"click('{bid}')" in obs.legal_actions
    # an id that is not on the page, and free text, never reach the browser: syntax penalty, nothing changes
    for bad in ['{"action": "click(\'9999\')"}', "{\"action\": \"fill('1', 'x')\"}", "click the button"]:
        obs2, r, term, trunc, info = env.step(bad)
        assert (r, term, info["syntax_ok"]) == (-1.0, False, False) and obs2.text == obs.text
    assert env.expert_action() == f"click('{bid}')"
    _, r, term, trunc, info = env.step(envs.format_action(f"click('{bid}')", thoughts="the only button"))
    assert r == 1.0 and term and not trunc and info["goal_reached"]
    assert not info["success"]  # three syntax errors (-3) then +1: return -2 (RL4VLM counts return > 0)
    # another thread (Ray's threaded actors use a pool): Playwright's sync API must not mind
    result = []

    def episode():
        env.reset(seed=1)
        result.append(env.step(envs.format_action(env.expert_action())))

    worker = threading.Thread(target=episode)
    worker.start()
    worker.join()
    _, r, term, _, info = result[0]
    assert r == 1.0 and term and info["success"]


def test_dead_browser_raises_env_crashed(env):
    env.reset(seed=2)
    mine = [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]
    browsers = [p for p in mine if not any(a.startswith("--type=") for a in p.cmdline())]
    assert browsers, "no Chromium started by this test process"
    for p in browsers:  # only the browsers this test process started
        os.kill(p.pid, signal.SIGKILL)
    psutil.wait_procs(browsers, timeout=10)
    bid = re.search(r"\[(\w+)\] button", env.tree).group(1)
    with pytest.raises(envs.EnvCrashed, match="browser died"):
        env.step(envs.format_action(f"click('{bid}')"))
    obs, _ = env.reset(seed=3)  # a new browser: the same env object works again
    assert obs.legal_actions


def test_task_list_and_static_prompt():
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    assert len(MINIWOB_TASKS) == len(set(MINIWOB_TASKS)) == 27
    assert set(MINIWOB_TASKS) <= {t.subdomain for t in ALL_MINIWOB_TASKS}
    with pytest.raises(ValueError, match="unknown MiniWoB task"):
        envs.make_env("miniwob:click-nothing")
    made = gym.make("vlmq/MiniWoB-v0", task="click-dialog", tree_budget=500).unwrapped  # no browser yet
    assert isinstance(made, MiniWoBEnv) and made.env_id == "miniwob:click-dialog" and made.tree_budget == 500
    text = MiniWoBEnv.static_prompt("Click the button.", "[13] button 'OK'")
    assert text.endswith("Goal: Click the button.\nPage:\n[13] button 'OK'") and "click('" in text
