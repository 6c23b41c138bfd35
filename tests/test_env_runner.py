"""EnvRunner: complete, correct turns in replay (replayed in fresh envs), eval mode, epsilon, and faults
(an env that crashes mid-episode, a sampler that hangs, a sampler killed and restarted by Ray)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import ray.cloudpickle

from actors.env_runner import EnvRunner, Runner
from actors.sampler import Sampler
from envs import EnvCrashed, env_from_config, make_env
from learner.weight_sync import Probe, pack
from vlmq.config import RunConfig


def scripted_cfg(policy="random", runners=1, envs=4, **runner) -> RunConfig:
    cfg = RunConfig()
    cfg.model.path = "/nonexistent"  # the scripted backend needs no model
    cfg.sampler.backend, cfg.sampler.policy = "scripted", policy
    cfg.runner.num_runners, cfg.runner.envs_per_runner = runners, envs
    for k, v in runner.items():
        setattr(cfg.runner, k, v)
    return cfg


class Sink:
    """A replay stand-in for in-process runners."""

    def __init__(self):
        self.turns = []

    def add(self, turns):
        self.turns.extend(turns)
        return len(turns)


def episodes_of(turns) -> dict[str, list]:
    eps: dict[str, list] = {}
    for t in sorted(turns, key=lambda t: (t.episode_id, t.turn_index)):
        eps.setdefault(t.episode_id, []).append(t)
    return eps


def assert_episode_replays(cfg: RunConfig, ep: list) -> None:
    """Play the episode's actions in a fresh env with its seed: prompts, rewards and dones must match."""
    env = env_from_config(cfg.env)
    obs, _ = env.reset(seed=ep[0].seed)
    history = []
    assert [t.turn_index for t in ep] == list(range(len(ep)))
    for i, t in enumerate(ep):
        messages, images = env.prompt(obs, history)
        assert t.messages == messages and len(t.images) == len(images)
        assert all(np.array_equal(a, b) for a, b in zip(t.images, images))
        history.append((obs.text, t.action_text))
        obs, reward, terminated, truncated, info = env.step(t.action_text)
        assert (t.reward, t.terminated, t.truncated, t.action, t.syntax_ok) == (
            reward, terminated, truncated, info["action"], info["syntax_ok"]
        )  # fmt: skip
        assert (terminated or truncated) == (i == len(ep) - 1)  # whole episodes only
        if terminated:
            assert t.next_messages is None and t.next_images == []
        else:
            nm, ni = env.prompt(obs, history)
            assert t.next_messages == nm and all(np.array_equal(a, b) for a, b in zip(t.next_images, ni))
            if i + 1 < len(ep):
                assert ep[i + 1].messages == t.next_messages


@pytest.mark.slow
def test_scripted_runners_fill_replay_with_complete_correct_turns(ray_local, tmp_path):
    from replay.client import start_replay
    from replay.store import ImageStore, open_root, read_folder
    from replay.turn import rows_to_turns

    cfg = scripted_cfg("epsilon:0.5", runners=2, envs=3, send_every=8)
    replay = start_replay(cfg.replay, str(tmp_path / "replay"))
    sampler = Sampler.remote(cfg.sampler, cfg.model)
    runners = [EnvRunner.remote(cfg, [sampler], replay, i) for i in range(2)]
    stats = ray.get([r.run.remote(120) for r in runners])
    assert all(s["turns"] >= 120 and s["crashes"] == 0 for s in stats)
    assert replay.flush() >= 0 and replay.stats()["online"] == sum(s["sent_turns"] for s in stats)

    fs, root = open_root(str(tmp_path / "replay"))
    turns = []
    for shard in sorted(fs.ls(root)):
        table, bad = read_folder(shard)
        assert not bad
        turns += rows_to_turns(table, ImageStore(fs, f"{shard}/images").get)
    eps = episodes_of(turns)
    assert len(turns) == sum(s["sent_turns"] for s in stats) and len(eps) == sum(s["episodes"] for s in stats)
    seeds = [ep[0].seed for ep in eps.values()]
    assert len(set(seeds)) == len(seeds) and max(seeds) < cfg.eval.seed  # disjoint across runners, not eval
    assert {e.split("-")[0] for e in eps} == {"r0", "r1"}
    for ep in eps.values():
        assert all(t.policy_version == -1 and t.gen_ids is None and t.logprobs is None for t in ep)
        assert_episode_replays(cfg, ep)


def test_eval_samples_at_eval_temperature_and_is_greedy_by_default():
    """Every evaluation request carries eval.temperature: 0 (greedy) unless set."""
    from actors.scripted_backend import ScriptedBackend

    class Recording(ScriptedBackend):
        def generate(self, requests, version):
            seen.extend(r.temperature for r in requests)
            return super().generate(requests, version)

    for temperature in (0.0, 0.7):
        cfg, seen = scripted_cfg("expert", envs=2), []
        cfg.eval.temperature, cfg.sampler.temperature = temperature, 1.0  # collection's stays apart
        ev = Runner(cfg, [Recording("expert")]).evaluate(3)
        assert ev["episodes"] == 3 and seen and set(seen) == {temperature}


@pytest.mark.slow
def test_eval_is_greedy_on_held_out_seeds_and_epsilon_fixes_syntax(ray_local):
    cfg = scripted_cfg("malformed:1.0", envs=4, epsilon=1.0)
    sampler = Sampler.remote(cfg.sampler, cfg.model)
    sink = Sink()
    runner = Runner(cfg, [sampler], sink)
    st = runner.run(40)
    # every model output is malformed, but epsilon=1 replaces each by a random legal action
    assert st["epsilon_actions"] == st["turns"] >= 40 and st["syntax_accuracy"] == 1.0
    assert all(t.syntax_ok for t in sink.turns)
    ev = runner.evaluate(10)  # no epsilon in eval: the malformed policy shows
    assert ev == {
        "episodes": 10,
        "success_rate": 0.0,
        "mean_return": -10.0,
        "syntax_accuracy": 0.0,
        "mean_length": 10.0,
    }

    expert = Runner(
        scripted_cfg("expert", envs=3), [Sampler.remote(scripted_cfg("expert").sampler, cfg.model)]
    )
    ev = expert.evaluate(7, seed=2_000_000)
    lengths = []
    for s in range(2_000_000, 2_000_007):
        env = make_env("numberline")
        env.reset(seed=s)
        lengths.append(abs(env.goal - env.pos))
    assert ev == {
        "episodes": 7,
        "success_rate": 1.0,
        "mean_return": 1.0,
        "syntax_accuracy": 1.0,
        "mean_length": pytest.approx(np.mean(lengths)),
    }
    assert expert.stats()["episodes"] == 0  # evaluation episodes are not training episodes


class CrashyRunner(Runner):
    """The first `crash` envs made raise EnvCrashed on their second step."""

    crash = 2

    def _make_env(self):
        env = super()._make_env()
        self.made = getattr(self, "made", 0) + 1
        if self.made <= self.crash:
            step, calls = env.step, []

            def crashing_step(text):
                calls.append(text)
                if len(calls) == 2:
                    raise EnvCrashed("browser died")
                return step(text)

            env.step = crashing_step
        return env


def test_a_crashing_env_is_recreated_and_its_partial_episode_dropped(ray_local):
    cfg = scripted_cfg("expert", envs=4, send_every=1)
    cfg.env.id = "ezpoints"  # long enough episodes that the second step is mid-episode
    sink = Sink()
    runner = CrashyRunner(cfg, [Sampler.remote(cfg.sampler, cfg.model)], sink)
    st = runner.run(60)
    assert st["crashes"] == 2 and st["dropped_turns"] == 2 and runner.made == 4 + 2
    assert st["turns"] >= 60
    eps = episodes_of(sink.turns)
    # the crashed envs' first episodes never reach replay; every episode that does is whole and correct
    assert f"{runner.tag}-0" not in eps and f"{runner.tag}-1" not in eps
    for ep in eps.values():
        assert_episode_replays(cfg, ep)


@ray.remote
class HangingSampler:
    def generate(self, requests, version=None):
        time.sleep(60)


def test_a_hanging_sampler_is_retried_then_the_runner_raises(ray_local):
    cfg = scripted_cfg()
    cfg.sampler.timeout_s, cfg.sampler.retries = 0.3, 2
    runner = Runner(cfg, [HangingSampler.remote()])
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="sampler call failed 3 times"):
        runner.run(10)
    assert time.monotonic() - t0 < 10 and runner.stats()["sampler_retries"] == 3


@pytest.mark.slow
def test_sampler_killed_mid_run_restarts_with_the_newest_adapter(
    ray_local, tiny_text_dir, make_lora_adapter, tmp_path
):
    from actors.hf_backend import HFBackend

    cfg = RunConfig()
    cfg.model.path, cfg.model.text_only = str(tiny_text_dir), True
    cfg.env.obs_mode = "text"
    cfg.sampler.backend, cfg.sampler.max_tokens, cfg.sampler.timeout_s = "hf", 8, 60.0
    cfg.runner.envs_per_runner = 4
    adapter = make_lora_adapter(seed=7, model_dir=tiny_text_dir)
    ref = HFBackend(str(tiny_text_dir), text_only=True)
    ref.load_lora(5, str(adapter))
    env = make_env("numberline", obs_mode="text")
    messages, images = env.prompt(env.reset(seed=0)[0])
    gen_ids = ref.tokenizer.encode('{"action": "+"}', add_special_tokens=False) + [ref.eos_id]
    probe = Probe(messages, images, gen_ids, ref.score(messages, images, gen_ids, 5))

    sampler = Sampler.options(max_restarts=1).remote(cfg.sampler, cfg.model, str(tmp_path / "sampler"))
    assert ray.get(sampler.load_adapter.remote(5, pack(adapter), probe))
    runner = EnvRunner.remote(cfg, [sampler], None, 0)
    done = runner.run.remote(80)
    while ray.get(runner.stats.remote())["turns"] < 20:
        time.sleep(0.2)
    ray.kill(sampler, no_restart=False)
    st = ray.get(done, timeout=300)
    assert st["turns"] >= 80 and st["policy_version"] == 5
    sst = ray.get(sampler.stats.remote())
    assert sst["restarted"] and sst["restored_version"] == 5 and sst["version"] == 5 and sst["requests"] > 0


def _turns_when_still(runner, at_least: int, timeout: float = 30.0) -> int:
    """The runner's turn count once it has reached `at_least` and stopped growing for half a second."""
    deadline, last = time.time() + timeout, -1
    while time.time() < deadline:
        turns = ray.get(runner.stats.remote())["turns"]
        if turns == last and turns >= at_least:
            return turns
        last = turns
        time.sleep(0.5)
    raise TimeoutError(f"the runner kept collecting: {turns} turns")


@pytest.mark.slow
def test_a_paced_runner_holds_at_its_allowance_and_goes_on_when_allowed_more(ray_local):
    """`allow(n)`: a running runner stops submitting once it has n turns (what is in flight still lands:
    at most one step of every env more), goes on when allowed more, and still stops on `stop()`."""
    envs = 4
    cfg = scripted_cfg("random", envs=envs)
    runner = EnvRunner.remote(cfg, [Sampler.remote(cfg.sampler, cfg.model)], None, 0)
    ray.get(runner.allow.remote(10))
    run = runner.run.remote(None)
    held = _turns_when_still(runner, 10)
    assert 10 <= held <= 10 + envs
    ray.get(runner.allow.remote(held + 30))
    more = _turns_when_still(runner, held + 30)
    assert held + 30 <= more <= held + 30 + envs
    ray.get(runner.stop.remote())
    # stopped while held: only the requests already in flight land, nothing new is submitted
    assert more <= ray.get(run, timeout=30)["turns"] <= more + envs


def test_the_driver_splits_the_runners_allowance_evenly_over_what_each_has():
    """pace_runners: ratio * (online updates + 1) + one step of every env, less every turn counted
    (a resumed run's earlier ones included), split evenly on top of each runner's own count; nothing
    more while the runners are ahead."""
    from types import SimpleNamespace

    from vlmq.driver import Driver

    allowed = {}

    class Fake:
        def __init__(self, i):
            self.allow = SimpleNamespace(remote=lambda n: allowed.__setitem__(i, n))

    cfg = RunConfig()
    cfg.learner.max_turns_per_update, cfg.runner.envs_per_runner = 4.0, 4
    driver = SimpleNamespace(cfg=cfg, runners=[Fake(0), Fake(1)])
    stats = [{"turns": 12}, {"turns": 8}]
    Driver.pace_runners(driver, stats, turns=20, updates=3)  # 4 * 4 + 8 - 20 = 4 turns more: 2 each
    assert allowed == {0: 14, 1: 10}
    Driver.pace_runners(driver, stats, turns=20, updates=0)  # 4 + 8 < 20: hold both where they are
    assert allowed == {0: 12, 1: 8}
    # resumed: 100 turns stored and 30 online updates made before this job run: 4 * 31 + 8 - 120 = 12
    Driver.pace_runners(driver, stats, turns=120, updates=30)
    assert allowed == {0: 18, 1: 14}
    cfg.learner.max_turns_per_update = 0.0  # no pacing: no call
    allowed.clear()
    Driver.pace_runners(driver, stats, turns=20, updates=0)
    assert allowed == {}
