"""EnvRunner: K envs in one Ray actor, stepping while the sampler generates, turns streamed to replay.

Pipelining: the envs are split into `runner.pipeline_groups` groups. The runner submits a group's
prompts to a sampler (one batched call, an ObjectRef) and goes on to the next group: it steps the
envs whose actions came back while the other groups' actions are being generated. With two groups
the sampler always has the next batch queued, and env stepping costs no sampler time.

Episodes: a turn waits in its episode until the episode ends, then goes to a send buffer that is
handed to the replay every `runner.send_every` turns (from a background thread, one batch in flight),
so the replay only ever sees whole episodes.
An env that raises (e.g. `envs.EnvCrashed`, a dead browser) loses its partial episode (counted in
`crashes` and `dropped_turns`) and is recreated; the runner goes on.

Versions: an episode's first completion fixes its policy version; its later turns ask the sampler for
that version (resident for the last `resident_versions` pushes), so an episode is played by one policy.
A sampler call that raises or exceeds `sampler.timeout_s` is resubmitted (to the next sampler, if
several) up to `sampler.retries` times, then the runner raises: it never hangs.

Samplers are Ray actor handles, or local backends (a `ScriptedBackend` object) that answer in the
runner's own thread: datasets are collected that way (`actors/collect.py`), through this same loop.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.protocol import Completion, Request
from envs import env_from_config, format_action
from learner.processing import text_to_gen_ids
from replay.turn import Turn
from vlmq.config import RunConfig, validate
from vlmq.metrics import RUNNER, SPECS, Metrics


@dataclass
class _Slot:
    """One env and the episode it is playing."""

    env: Any
    episode_id: str = ""
    seed: int = 0
    obs: Any = None
    messages: list = field(default_factory=list)
    images: list = field(default_factory=list)
    history: list = field(default_factory=list)
    turns: list = field(default_factory=list)
    version: int | None = None  # fixed by the episode's first completion
    ret: float = 0.0
    syntax_ok: int = 0
    active: bool = False


@dataclass
class _Mode:
    """What differs between collecting and evaluating."""

    temperature: float
    epsilon: float
    record: bool  # turns to replay
    seeds: Iterator[int]


class Runner:
    """The runner's logic; `EnvRunner` is the same class as a Ray actor (threaded, so `stats` and `stop`
    answer while `run` works)."""

    def __init__(
        self, cfg: RunConfig, samplers: list, replay: Any = None, index: int = 0, tag: str | None = None
    ):
        validate(cfg)  # a config built by hand, not by load_config, is checked too
        if not samplers:
            raise ValueError("an EnvRunner needs at least one sampler handle")
        if not 0 <= index < cfg.runner.num_runners:
            raise ValueError(
                f"runner index {index} is outside 0..runner.num_runners-1 ({cfg.runner.num_runners})"
            )
        self.cfg = cfg
        self.samplers = list(samplers)
        self.replay = replay
        self.index = index
        # episode ids: unique across runners and their restarts, or the caller's (a dataset's, reproducible)
        self.tag = tag or f"r{index}-{uuid.uuid4().hex[:8]}"
        self.rng = np.random.default_rng([cfg.seed, index])
        self.slots = [_Slot(self._make_env()) for _ in range(cfg.runner.envs_per_runner)]
        self.eval_slots: list[_Slot] = []
        self.tokenizer = None  # tokenizes epsilon-random actions, so those turns stay trainable
        if cfg.runner.epsilon > 0 and Path(cfg.model.path).exists():
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self._episodes = 0
        self._stop = threading.Event()
        self._allowed: int | None = None  # `run` holds its requests once totals["turns"] reaches it
        self._outbox: list[Turn] = []
        self._sending: tuple[Future, int] | None = None  # the add in flight and its turn count
        self.totals = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=100)  # (return, success, syntax acc, steps)
        self.last_version = None
        self._run_time = 0.0
        self._metrics = (
            Metrics([n for n, s in SPECS.items() if s.tags == RUNNER], runner=str(index))
            if ray.is_initialized()
            else None
        )

    # ---- public API ------------------------------------------------------------------------------
    def run(self, num_turns: int | None = None) -> dict:
        """Collect `num_turns` turns (None: until `stop()`), send them to replay, return `stats()`."""
        self._stop.clear()
        target = self.totals["turns"] + num_turns if num_turns is not None else None
        return self._record(
            self._train_seeds(),
            lambda: self._stop.is_set() or (target is not None and self.totals["turns"] >= target),
            lambda: self._allowed is not None and self.totals["turns"] >= self._allowed,
        )

    def allow(self, turns: int | None) -> None:
        """Pace `run`: collect until this runner's turn count reaches `turns` (None: no limit), then hold
        new sampler requests until the driver allows more. The driver paces runners to its learner."""
        self._allowed = turns

    def play(self, seeds: Iterable[int]) -> dict:
        """One recorded episode per seed (a dataset), sent to replay; returns `stats()` once all are played.
        An episode whose env crashes is dropped and counted, as in `run`."""
        return self._record(iter(seeds), lambda: False)

    def _record(self, seeds: Iterator[int], done, paused=lambda: False) -> dict:
        mode = _Mode(self.cfg.sampler.temperature, self.cfg.runner.epsilon, True, seeds)
        t0 = time.perf_counter()
        try:
            self._loop(self.slots, mode, done, paused=paused)
        finally:
            self._run_time += time.perf_counter() - t0
            self._send(force=True)
        return self.stats()

    def evaluate(self, episodes: int, seed: int | None = None) -> dict:
        """Greedy (or at `eval.temperature`), no epsilon, seeds seed..seed+episodes-1 (held out: default
        `eval.seed`), nothing to replay."""
        if episodes < 1:
            raise ValueError(f"evaluate needs episodes >= 1, got {episodes}")
        seed = self.cfg.eval.seed if seed is None else seed
        if not self.eval_slots:
            self.eval_slots = [_Slot(self._make_env()) for _ in range(self.cfg.runner.envs_per_runner)]
        for s in self.eval_slots:
            s.active = False
        results: list[tuple] = []
        mode = _Mode(self.cfg.eval.temperature, 0.0, False, iter(range(seed, seed + episodes)))
        self._loop(self.eval_slots, mode, lambda: len(results) >= episodes, results)
        rets, succ, syn, steps = (np.array(x, np.float64) for x in zip(*results))
        return {
            "episodes": len(results),
            "success_rate": float(succ.mean()),
            "mean_return": float(rets.mean()),
            "syntax_accuracy": float(np.sum(syn * steps) / max(1.0, steps.sum())),
            "mean_length": float(steps.mean()),
        }

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        r = list(self.recent)
        active = self._run_time - self.totals["held_s"]  # time held by the driver's pacing is not collecting
        steps = sum(x[3] for x in r)
        return {
            **{
                k: self.totals[k]
                for k in (
                    "turns",
                    "env_steps",
                    "episodes",
                    "crashes",
                    "dropped_turns",
                    "sent_turns",
                    "acked_turns",
                )
            },
            "sampler_retries": self.totals["sampler_retries"],
            "epsilon_actions": self.totals["epsilon_actions"],
            "mean_return": float(np.mean([x[0] for x in r])) if r else float("nan"),
            "success_rate": float(np.mean([x[1] for x in r])) if r else float("nan"),
            "syntax_accuracy": sum(x[2] * x[3] for x in r) / steps if steps else float("nan"),
            "last_return": r[-1][0] if r else float("nan"),
            "turns_per_s": self.totals["turns"] / active if active > 0 else 0.0,
            # share of run time spent waiting for the sampler: near 1 means env work is fully hidden
            "wait_fraction": self.totals["wait_s"] / active if active > 0 else 0.0,
            "policy_version": self.last_version,
            "index": self.index,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
        }

    # ---- the loop --------------------------------------------------------------------------------
    def _loop(
        self, slots: list[_Slot], mode: _Mode, done, results: list | None = None, paused=lambda: False
    ) -> None:
        n = min(self.cfg.runner.pipeline_groups, len(slots))
        groups = [slots[g::n] for g in range(n)]
        for s in slots:
            if not s.active:
                self._start_episode(s, mode)
        pending = [self._submit(g, mode) for g in groups]
        g = 0
        while not done():
            if not pending[g] and not any(s.active for s in slots):
                return  # evaluation: every seed played
            t0 = time.perf_counter()
            completions = self._collect(pending[g], mode)
            self.totals["wait_s"] += time.perf_counter() - t0
            for slot, comp in completions:
                self._step(slot, comp, mode, results)
            pending[g] = []
            if paused() and not done():  # held: what is finished goes where the learner can draw it
                self._send(force=True)
                t0 = time.perf_counter()
                while paused() and not done():
                    self._stop.wait(0.05)
                self.totals["held_s"] += time.perf_counter() - t0
            if done():
                break
            pending[g] = self._submit(groups[g], mode)
            self._send()
            g = (g + 1) % n
        for calls in pending:  # finish what is in flight: no sampler work is thrown away
            for slot, comp in self._collect(calls, mode):
                self._step(slot, comp, mode, results)

    def _submit(self, group: list[_Slot], mode: _Mode) -> list:
        """One sampler call per policy version among the group's active episodes: [ref, slots, reqs, version]."""
        by_version: dict[int | None, list[_Slot]] = {}
        for s in group:
            if s.active:
                by_version.setdefault(s.version, []).append(s)
        calls = []
        for version, slots in by_version.items():
            reqs = [self._request(s, mode) for s in slots]
            calls.append([self._call(reqs, version, 0), slots, reqs, version])
        return calls

    def _call(self, reqs: list[Request], version: int | None, attempt: int):
        """An ObjectRef from a sampler actor, or a local backend's completions (answered at once)."""
        sampler = self.samplers[(self.index + attempt + self.totals["calls"]) % len(self.samplers)]
        self.totals["calls"] += 1
        if isinstance(sampler, ray.actor.ActorHandle):
            return sampler.generate.remote(reqs, version)
        return sampler.generate(reqs, version)

    def _collect(self, calls: list, mode: _Mode) -> list[tuple[_Slot, Completion]]:
        out = []
        for ref, slots, reqs, version in calls:
            attempt = 0
            while True:
                try:
                    comps = ref if isinstance(ref, list) else ray.get(ref, timeout=self.cfg.sampler.timeout_s)
                    break
                except (ray.exceptions.RayError, TimeoutError) as err:
                    attempt += 1
                    self.totals["sampler_retries"] += 1
                    if attempt > self.cfg.sampler.retries:
                        raise RuntimeError(
                            f"runner {self.index}: sampler call failed {attempt} times "
                            f"(sampler.retries={self.cfg.sampler.retries}, timeout_s={self.cfg.sampler.timeout_s}): {err!r}"
                        ) from err
                    time.sleep(
                        min(self.cfg.sampler.timeout_s, 0.5 * 2**attempt)
                    )  # give a restarting sampler time to come back
                    ref = self._call(reqs, version, attempt)
            if len(comps) != len(slots):
                raise RuntimeError(f"sampler returned {len(comps)} completions for {len(slots)} requests")
            out.extend(zip(slots, comps))
        return out

    def _request(self, s: _Slot, mode: _Mode) -> Request:
        expert = s.env.expert_action() if self.cfg.sampler.backend == "scripted" else None
        return Request(
            messages=s.messages,
            images=s.images,
            legal_actions=list(s.obs.legal_actions),
            expert_action=expert,
            temperature=mode.temperature,
            max_tokens=self.cfg.sampler.max_tokens,
        )

    def _step(self, s: _Slot, comp: Completion, mode: _Mode, results: list | None) -> None:
        text, gen_ids, logprobs = comp.text, list(comp.gen_ids), list(comp.logprobs)
        if mode.epsilon > 0 and self.rng.random() < mode.epsilon:
            text = format_action(s.obs.legal_actions[self.rng.integers(len(s.obs.legal_actions))])
            gen_ids = self._tokenize(text)
            logprobs = []  # not sampled from the model: no behaviour log-probs
            self.totals["epsilon_actions"] += 1
        if s.version is None and comp.version >= 0:  # -1: scripted, any sampler version will do
            s.version = comp.version
        self.last_version = comp.version
        try:
            obs, reward, terminated, truncated, info = s.env.step(text)
            next_messages, next_images = (None, [])
            history = s.history + [(s.obs.text, text)]
            if not terminated:
                next_messages, next_images = s.env.prompt(obs, history)
        except Exception as err:  # a dead env loses its episode, not the runner
            self._crash(s, err, mode)
            return
        self.totals["env_steps"] += 1
        s.ret += reward
        s.syntax_ok += bool(info["syntax_ok"])
        if mode.record:
            s.turns.append(
                Turn(
                    episode_id=s.episode_id,
                    turn_index=len(s.turns),
                    env_id=self.cfg.env.id,
                    seed=s.seed,
                    messages=s.messages,
                    images=s.images,
                    prompt_ids=list(comp.prompt_ids) or None,
                    gen_ids=gen_ids or None,
                    action_text=text,
                    action=info["action"],
                    reward=float(reward),
                    syntax_ok=bool(info["syntax_ok"]),
                    terminated=bool(terminated),
                    truncated=bool(truncated),
                    success=bool(info["success"]),
                    policy_version=int(comp.version),
                    logprobs=logprobs if gen_ids and len(logprobs) == len(gen_ids) else None,
                    wall_time=time.time(),
                    next_messages=next_messages,
                    next_images=list(next_images),
                )
            )
            self.totals["turns"] += 1
        if terminated or truncated:
            steps = len(s.history) + 1
            record = (s.ret, float(bool(info["success"])), s.syntax_ok / steps, steps)
            if results is not None:
                results.append(record)
            else:
                self.recent.append(record)
                self.totals["episodes"] += 1
                self._outbox.extend(s.turns)
                self._record_metrics(record)
            self._start_episode(s, mode)
        else:
            s.obs, s.messages, s.images, s.history = obs, next_messages, list(next_images), history

    def _crash(self, s: _Slot, err: Exception, mode: _Mode) -> None:
        self.totals["crashes"] += 1
        self.totals["dropped_turns"] += len(s.turns)
        if self._metrics:
            self._metrics.inc("env_crashes")
        try:
            s.env.close()
        except Exception:
            pass
        s.env = self._make_env()
        self._start_episode(s, mode)

    def _start_episode(self, s: _Slot, mode: _Mode) -> None:
        seed = next(mode.seeds, None)
        s.turns, s.history, s.version, s.ret, s.syntax_ok = [], [], None, 0.0, 0
        s.active = seed is not None
        if seed is None:
            return
        for attempt in range(3):  # a crashing reset gets a fresh env, a few times
            try:
                s.obs, _ = s.env.reset(seed=seed)
                s.messages, s.images = s.env.prompt(s.obs, ())
                break
            except Exception:
                if attempt == 2:
                    raise
                self.totals["crashes"] += 1
                s.env = self._make_env()
        s.images = list(s.images)
        s.seed = seed
        s.episode_id = f"{self.tag}-{self._episodes}"
        self._episodes += 1

    def _train_seeds(self):
        """Seeds below eval.seed (held out), disjoint across runners: index, index + M, index + 2M, ..."""
        m = self.cfg.runner.num_runners
        while True:
            k = self.totals["seeds"]
            self.totals["seeds"] += 1
            yield (self.cfg.seed + self.index + m * k) % self.cfg.eval.seed

    def _send(self, force: bool = False) -> None:
        """Hand full batches to the replay from a background thread (one add in flight at most, so a
        slow replay slows the runner down instead of piling up turns); `force` also waits for it."""
        if self._outbox and (force or len(self._outbox) >= self.cfg.runner.send_every):
            batch, self._outbox = self._outbox, []
            if self.replay is not None:
                self._wait_sent()
                self._sending = (self._add_in_background(batch), len(batch))
            self.totals["sent_turns"] += len(batch)
        if force:
            self._wait_sent()

    def _add_in_background(self, batch: list[Turn]) -> Future:
        """replay.add on a daemon thread: a runner told to exit while the replay is slow or gone
        exits (an executor's worker thread would hold the process until the add returned)."""
        fut: Future = Future()

        def add() -> None:
            try:
                fut.set_result(self.replay.add(batch))
            except BaseException as err:  # surfaces in the runner, at _wait_sent
                fut.set_exception(err)

        threading.Thread(target=add, daemon=True, name="replay-send").start()
        return fut

    def _wait_sent(self) -> None:
        if self._sending is not None:
            (fut, n), self._sending = self._sending, None
            fut.result()  # a replay error surfaces here, in the runner
            self.totals["acked_turns"] += n  # durable in the replay (its add returns once on disk)

    def _tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return []
        return text_to_gen_ids(self.tokenizer, text, self.cfg.sampler.max_tokens)

    def _make_env(self):
        return env_from_config(self.cfg.env)

    # ---- metrics -------------------------------------------------------------------------------
    def _record_metrics(self, record: tuple) -> None:
        if not self._metrics:
            return
        ret, success, syntax, steps = record
        st = self.stats()
        self._metrics.inc("env_steps", steps)
        self._metrics.inc("episodes")
        self._metrics.set("episode_return", ret)
        self._metrics.set("success_rate", st["success_rate"])
        self._metrics.set("syntax_accuracy", st["syntax_accuracy"])


EnvRunner = ray.remote(max_concurrency=4)(Runner)
