"""The training job: offline phase, then online phase, on whatever Ray cluster the job runs in.

    model -> replay (+ offline dataset) -> learner, samplers, env runners
    phase 1: learner updates on offline turns only
    phase 2: runners collect with the newest verified LoRA version while the learner trains on a mix
             of offline and online turns; a new version every `publish_every` updates; at most
             `max_updates_per_turn` updates per collected turn, so the learner cannot over-fit stale data.

Faults: a dead env runner is replaced (its unacknowledged turns are dropped and counted); a dead
learner worker restarts the learner group from the latest checkpoint (`learner.max_restarts` times);
samplers and replay shards are restarted by Ray. Counts of turns and episodes come from the replay
(`ReplayClient.stored`), so a resume or a replacement never miscounts them.

Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS is set); run directly it starts a
local Ray. Paths are made absolute before any actor sees them. docs/driver.md describes the checkpoint
layout and resume rules.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from actors.placement import start_runner, start_runners, start_samplers
from learner.model_files import ship
from learner.trainer import LearnerDied, LearnerGroup
from vlmq.checkpoints import Checkpoints, step_name
from vlmq.config import ConfigError, RunConfig, dump_config, parse_config, save_config, validate
from vlmq.evaluate import evaluate_policy, init_ray
from vlmq.monitor import Monitor, table
from vlmq.nodes import check_reachable, nodes_without

log = logging.getLogger(__name__)


@dataclass
class DriverState:
    """What the driver itself must remember across a resume (the learner saves the rest)."""

    updates: int = 0  # learner updates, both phases
    version: int = 0  # newest LoRA version pushed and verified (0: the base model)
    env_steps: int = 0  # online turns stored by the replay (all job runs)
    episodes: int = 0  # online episodes stored by the replay (all job runs)
    online_s: float = 0.0  # collection wall time in earlier job runs
    evals: dict[str, float] = field(default_factory=dict)  # label -> greedy success
    eval_syntax: dict[str, float] = field(default_factory=dict)  # label -> share of well-formed actions
    sync_s: list[float] = field(default_factory=list)
    version_updates: dict[str, int] = field(default_factory=dict)  # version -> update count when pushed


# What a checkpoint's weights and data depend on: a resume with other values would load a LoRA of
# another shape, critics of another count, or train on another env's turns.
MUST_MATCH = (
    "model.text_only", "model.lora_r", "model.lora_alpha", "model.lora_targets", "model.num_critics",
    "env.id", "env.obs_mode",
)  # fmt: skip


def check_resumable(cfg: RunConfig, ckpts: Checkpoints, ckpt: str) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a field of MUST_MATCH, by name."""
    text = ckpts.read_text(ckpt, "config.yaml")
    if text is None:
        return  # a checkpoint from before checkpoints kept their config
    saved = parse_config(text, f"{ckpts.folder(ckpt)}/config.yaml")
    for key in MUST_MATCH:
        section, name = key.split(".")
        old, new = getattr(getattr(saved, section), name), getattr(getattr(cfg, section), name)
        if old != new:
            raise ConfigError(
                f"--resume: {key} is {new!r} but checkpoint {ckpt} was trained with {old!r}; "
                f"resume with {key}={old!r}, or start a new run (another name= / out_dir=)"
            )


# What an offline dataset's turns depend on (its meta.json key -> the env field): a run with other
# values would train on prompts, rewards or episode ends its own env never produces.
DATASET_MUST_MATCH = {
    "env_id": "id", "obs_mode": "obs_mode", "history": "history", "syntax_penalty": "syntax_penalty",
    "max_steps": "max_steps", "demo": "demo", "env_kwargs": "kwargs",
}  # fmt: skip
RECORDED_LATER = {"demo": 0}  # what a dataset older than the key was collected with


def check_dataset(cfg: RunConfig) -> None:
    """Refuse a `data.path` that is no dataset, or was collected with another env config, naming the
    field; of the keys its meta lacks (a dataset written before they were recorded) only those with a
    known old value (RECORDED_LATER) are checked."""
    from replay.datasets import read_meta

    url = cfg.data.path
    meta = read_meta(url)
    if meta is None:
        raise FileNotFoundError(f"data.path {url} is not a dataset folder (no meta.json)")
    meta = {**RECORDED_LATER, **meta}
    for key, name in DATASET_MUST_MATCH.items():
        if key in meta and meta[key] != getattr(cfg.env, name):
            raise ConfigError(
                f"data.path {url} was collected with env.{name}={meta[key]!r}, but this run has "
                f"env.{name}={getattr(cfg.env, name)!r}; set env.{name}={meta[key]!r} or collect a new "
                "dataset (leave data.path empty)"
            )


def _absolute(cfg: RunConfig) -> None:
    """Actors may run in another working directory (a job's runtime env): give them absolute paths."""

    def absolute(p: str) -> str:
        return p if not p or "://" in p else str(Path(p).absolute())  # an fsspec URL stays as it is

    cfg.out_dir = absolute(cfg.out_dir)
    cfg.model.path = absolute(cfg.model.path)
    cfg.data.path = absolute(cfg.data.path)
    cfg.replay.root = absolute(cfg.replay.root)
    cfg.checkpoint_root = absolute(cfg.checkpoint_root)


class Driver:
    def __init__(self, cfg: RunConfig, resume: bool):
        from replay.client import start_replay

        validate(cfg)  # before any folder or Ray: a hand-made config (train() from Python) too
        _absolute(cfg)
        if cfg.data.path:
            check_dataset(cfg)  # before anything is created or started
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.ckpts = Checkpoints(cfg.checkpoint_url)
        ckpt = self.ckpts.latest()
        if resume and ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.ckpts.url}; nothing to resume")
        if not resume and ckpt is not None:
            raise FileExistsError(
                f"{self.run_dir} already holds a run with checkpoints; pass --resume to continue it, "
                "or choose another name= / out_dir="
            )
        if ckpt is not None:
            check_resumable(cfg, self.ckpts, ckpt)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        init_ray()
        self.monitor = Monitor(self.run_dir, cfg.name)
        self._ensure_model()
        self.model_files = None  # shipped only for nodes that cannot see model.path (None too: too big)
        if "://" not in cfg.model.path and nodes_without(f"{cfg.model.path}/config.json"):
            self.model_files = ship(cfg.model.path)
        if cfg.env.obs_mode == "both":
            log.info(
                "obs_mode=both: every prompt has the image and the state in words (a random-initialised "
                "tiny model cannot learn to read digits from pixels on a CPU in minutes)"
            )
        self.replay = start_replay(cfg.replay, cfg.replay.root or str(self.run_dir / "replay"))
        self._ensure_offline_data()
        self.learner = LearnerGroup(cfg.model, cfg.learner, model_files=self.model_files)
        check_reachable(self.ckpts.url, self.learner.bundle, "checkpoint_root")  # the learner writes there
        self.state = DriverState()
        if ckpt is not None:
            self.learner.load(self.ckpts.folder(ckpt) + "/learner")
            self.state = DriverState(**self.ckpts.driver_state(ckpt))
            log.info("resumed from %s: update %d, version %d", ckpt, self.state.updates, self.state.version)
        self.samplers = start_samplers(cfg, model_files=self.model_files)
        self.runners = start_runners(cfg, self.samplers, self.replay)
        self.uses_lora = cfg.sampler.backend != "scripted"
        self.probe = self._make_probe()
        self.failed_pushes = 0
        self.pushed = not self.uses_lora
        self.restarts = {"runner": 0, "learner": 0}
        self.retired_turns = 0  # turns collected by runners that died, in this online phase
        self.retired_acked = 0  # turns of runners that died that the replay had acknowledged
        self.last_stats: dict[int, dict] = {}  # each runner's newest stats
        self.phase_s: dict[str, float] = {}  # wall seconds per phase of this job run (results.json)

    # ---- setup -----------------------------------------------------------------------------------
    def _ensure_model(self) -> None:
        path = Path(self.cfg.model.path)
        if path.exists():
            return
        if not self.cfg.model.build_tiny:
            raise FileNotFoundError(f"model.path {path} does not exist (and model.build_tiny is false)")
        from vlmq.tiny_model import build_tiny_model

        build_tiny_model(path, arch="text" if self.cfg.model.text_only else "idefics3", seed=self.cfg.seed)
        log.info("built the tiny %s model at %s", "text" if self.cfg.model.text_only else "VLM", path)

    def _ensure_offline_data(self) -> None:
        from actors.collect import collect
        from replay.store import open_root

        cfg = self.cfg
        if self.replay.stats()["offline"] > 0:  # a restarted job: the shards reloaded their datasets
            return
        url = cfg.data.path or str(self.run_dir / "dataset")  # a folder or an fsspec URL
        fs, path = open_root(url)
        if not fs.exists(f"{path}/meta.json"):  # no data.path (checked at start): collect one
            if fs.exists(path):
                fs.rm(path, recursive=True)  # a collection that died half-way
            t0 = time.time()
            summary = collect(cfg, url, workers=2)
            log.info(
                "collected %d %s episodes of %s in %.0fs: success %.3f", cfg.data.episodes, cfg.data.policy,
                cfg.env.id, time.time() - t0, summary.get("success_rate", float("nan")),
            )  # fmt: skip
        check_reachable(
            url, {"CPU": cfg.replay.num_cpus, **cfg.replay.resources}, "data.path (the offline dataset)"
        )
        n = self.replay.load_offline(url)
        log.info("offline partition: %d turns from %s", n, url)

    def _make_probe(self) -> dict:
        """A fixed prompt and continuation that every pushed version is checked on."""
        from envs import env_from_config
        from learner.processing import load_processor, text_to_gen_ids

        env = env_from_config(self.cfg.env)
        obs, _ = env.reset(seed=self.cfg.eval.seed - 1)
        messages, images = env.prompt(obs)
        text = env.format_action(obs.legal_actions[0])
        env.close()
        processor = load_processor(self.cfg.model.path, self.cfg.model.text_only)
        tokenizer = getattr(processor, "tokenizer", processor)
        return {"messages": messages, "images": list(images), "gen_ids": text_to_gen_ids(tokenizer, text)}

    # ---- the pieces of a phase -------------------------------------------------------------------
    def publish(self) -> bool:
        """Export the learner's adapter as the next version, push it to every sampler, verified."""
        from learner.weight_sync import unpack

        if not self.uses_lora:
            return False
        version = self.state.version + 1
        t0 = time.perf_counter()
        data = self.learner.adapter_bytes()
        unpack(data, self.run_dir / "adapters" / f"v{version}")  # the run's record (vlmq eval --adapter)
        probe = dict(self.probe, logprobs=self.learner.reference_logprobs(**self.probe))
        blob = ray.put(data)
        oks = ray.get([s.load_adapter.remote(version, blob, probe) for s in self.samplers])
        sync_s = time.perf_counter() - t0
        if not all(oks):
            self.failed_pushes += 1
            self.monitor.count("sync_failures", oks.count(False))
            log.warning("version %d refused by %d sampler(s): probe mismatch", version, oks.count(False))
            if self.failed_pushes >= 3:
                raise RuntimeError("3 LoRA pushes in a row were refused by the samplers' probe check")
            return False
        self.failed_pushes = 0
        self.pushed = True
        self.state.version = version
        self.state.sync_s.append(sync_s)
        self.state.version_updates[str(version)] = self.state.updates
        self.monitor.observe("sync_latency_s", sync_s)
        self.monitor.gauge("policy_version", version)
        self.monitor.log(
            "pushes", self.state.updates, {"version": version, "env_steps": self.state.env_steps}
        )
        return True

    def update(self, offline_fraction: float) -> dict[str, float]:
        cfg = self.cfg.learner
        turns = self.replay.sample(cfg.batch_size, offline_fraction)
        m = self.learner.step(turns)
        self.state.updates += 1
        self.monitor.step = self.state.updates
        self.monitor.count("updates", 1)
        self.monitor.gauge("actor_loss", m["actor_loss"])
        self.monitor.gauge("critic_loss", m["critic_loss"])
        self.monitor.gauge("filter_acceptance", m["filter_rate"])
        self.monitor.log("updates", self.state.updates, m)
        if self.state.updates % cfg.checkpoint_every == 0:
            self.checkpoint()
        return m

    def checkpoint(self) -> str:
        """Learner state (written by the learner, on its node) + driver state, under one storage root;
        the replay flushes so its files match the checkpoint; `latest` moves last."""
        self.replay.flush()
        name = step_name(self.state.updates)
        self.learner.save(self.ckpts.folder(name) + "/learner")
        self.ckpts.write_text(name, "config.yaml", dump_config(self.cfg))  # what a resume must match
        self.ckpts.write_text(name, "driver.json", json.dumps(self.state.__dict__, indent=1))
        self.ckpts.commit(name)
        return name

    def evaluate(self, label: str) -> float:
        """Greedy on held-out seeds (eval.seed ...), split over the runners."""
        t0 = time.time()
        out = evaluate_policy(self.runners, self.cfg.eval.episodes, self.cfg.eval.seed)
        self.phase_s[f"eval_{label}"] = time.time() - t0
        self.state.evals[label] = out["success_rate"]
        self.state.eval_syntax[label] = out["syntax_accuracy"]
        self.monitor.gauge("eval_success", out["success_rate"], partition=label)
        self.monitor.log(
            "eval", self.state.env_steps,
            {"success": out["success_rate"], "return": out["mean_return"], "syntax_accuracy": out["syntax_accuracy"]},
        )  # fmt: skip
        log.info(
            "[eval %s] version %d: success %.3f, return %.3f, syntax %.3f (%d episodes)",
            label, self.state.version, out["success_rate"], out["mean_return"], out["syntax_accuracy"],
            out["episodes"],
        )  # fmt: skip
        return out["success_rate"]

    def _offline_fraction(self, online_update: int) -> float:
        r, steps = self.cfg.replay, max(1, self.cfg.learner.online_steps)
        if r.offline_fraction_final < 0:
            return r.offline_fraction
        return r.offline_fraction + (r.offline_fraction_final - r.offline_fraction) * online_update / steps

    # ---- the phases ------------------------------------------------------------------------------
    # ---- faults --------------------------------------------------------------------------------
    def restart_learner(self, err: LearnerDied) -> None:
        """A new learner group from the latest checkpoint: the updates since it are redone (a
        rollback, in the history's `faults`); the policy version only counts up."""
        self.restarts["learner"] += 1
        if self.restarts["learner"] > self.cfg.learner.max_restarts:
            raise RuntimeError(
                f"learner.max_restarts={self.cfg.learner.max_restarts} used up: {err}"
            ) from err
        self.learner.shutdown()
        self.learner = LearnerGroup(self.cfg.model, self.cfg.learner, model_files=self.model_files)
        ckpt = self.ckpts.latest()
        back_to = 0
        if ckpt is not None:
            self.learner.load(self.ckpts.folder(ckpt) + "/learner")
            back_to = self.ckpts.driver_state(ckpt)["updates"]
        log.warning(
            "%s; learner restarted from %s: update %d -> %d (restart %d of %d)", str(err).splitlines()[0],
            ckpt or "scratch", self.state.updates, back_to, self.restarts["learner"],
            self.cfg.learner.max_restarts,
        )  # fmt: skip
        self.monitor.count("learner_restarts", 1)
        self.monitor.log("faults", back_to, {"fault": "learner", "from_update": self.state.updates})
        self.state.updates = back_to

    def replace_runner(self, i: int, err: Exception) -> None:
        """A runner that died, or whose run raised, is killed and a new one takes its index; the
        turns it had collected but the replay had not acknowledged are lost, and counted."""
        self.restarts["runner"] += 1
        limit = self.cfg.runner.max_restarts
        if 0 <= limit < self.restarts["runner"]:
            raise RuntimeError(f"runner.max_restarts={limit} used up: {err}") from err
        last = self.last_stats.pop(i, {})
        dropped = last.get("turns", 0) - last.get("acked_turns", 0)
        self.retired_turns += last.get("turns", 0)
        self.retired_acked += last.get("acked_turns", 0)
        ray.kill(self.runners[i])
        self.runners[i] = start_runner(self.cfg, self.samplers, self.replay, i)
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("runner %d failed (%s); replaced, %d unacknowledged turns dropped", i, why, dropped)
        self.monitor.count("runner_restarts", 1)
        self.monitor.count("dropped_turns", dropped)
        self.monitor.log(
            "faults", self.state.updates, {"fault": "runner", "runner": i, "dropped_turns": dropped}
        )

    def poll_runners(self, runs: list) -> list[dict]:
        """Every runner's stats; a failed runner is replaced and its run started again."""
        refs = [r.stats.remote() for r in self.runners]
        out = []
        for i, ref in enumerate(refs):
            try:
                done, _ = ray.wait([runs[i]], timeout=0)
                ray.get(done)  # run(None) returns only on stop(): a finished run here has raised
                self.last_stats[i] = ray.get(ref)
            except ray.exceptions.RayError as err:
                self.replace_runner(i, err)
                runs[i] = self.runners[i].run.remote(None)
                self.last_stats[i] = ray.get(self.runners[i].stats.remote())
            out.append(self.last_stats[i])
        return out

    def stop_runners(self, runs: list) -> list[dict]:
        """Stop every run and return the runners' final stats (a runner that died is replaced)."""
        for r in self.runners:
            r.stop.remote()
        out = []
        for i, ref in enumerate(runs):
            try:
                self.last_stats[i] = ray.get(ref)
            except ray.exceptions.RayError as err:
                self.replace_runner(i, err)
                self.last_stats[i] = ray.get(self.runners[i].stats.remote())
            out.append(self.last_stats[i])
        return out

    def count_stored(self) -> None:
        stored = self.replay.stored()
        self.state.env_steps, self.state.episodes = stored["turns"], stored["episodes"]

    def offline_phase(self) -> None:
        cfg = self.cfg.learner
        self.monitor.phase("offline", self.state.updates, self.state.env_steps)
        t0 = time.time()
        while self.state.updates < cfg.offline_steps:
            try:
                m = self.update(1.0)
            except LearnerDied as err:
                self.restart_learner(err)
                continue
            self.monitor.line(
                self.state.updates, cfg.offline_steps, "updates",
                f"actor {m['actor_loss']:.3f} critic {m['critic_loss']:.4f} accept {m['filter_rate']:.2f}",
            )  # fmt: skip
        self.phase_s["offline"] = time.time() - t0

    def online_phase(self) -> None:
        cfg = self.cfg.learner
        end = cfg.offline_steps + cfg.online_steps
        if self.state.updates >= end:
            return
        if not self.pushed:
            self.publish()  # a resumed job's samplers are new: push the current policy first
        runs = [r.run.remote(None) for r in self.runners]
        self.count_stored()  # what earlier job runs stored, whatever their checkpoints say
        base_steps, t0, last, final = self.state.env_steps, time.time(), {}, []
        self.retired_turns = 0
        self.monitor.phase("online", self.state.updates, self.state.env_steps)
        try:
            while self.state.updates < end:
                stats = self.poll_runners(runs)
                turns = self.retired_turns + sum(s["turns"] for s in stats)  # this job run's
                self.state.env_steps = base_steps + turns
                self.pace_runners(stats, self.state.env_steps, self.state.updates - cfg.offline_steps)
                try:
                    if (
                        self.state.updates - cfg.offline_steps
                        >= cfg.max_updates_per_turn * self.state.env_steps
                    ):
                        time.sleep(0.2)  # waiting for turns: no need to poll the runners faster
                    else:
                        last = self.update(self._offline_fraction(self.state.updates - cfg.offline_steps))
                        if (self.state.updates - cfg.offline_steps) % cfg.publish_every == 0:
                            self.publish()
                except LearnerDied as err:
                    self.restart_learner(err)
                    continue
                elapsed = time.time() - t0
                self._report(stats, turns, elapsed, last)
                every = self.cfg.eval.every
                if every and self.state.updates % every == 0 and last:
                    self.stop_runners(runs)
                    self.evaluate(f"update_{self.state.updates}")
                    runs = [r.run.remote(None) for r in self.runners]
        finally:
            try:
                final = self.stop_runners(runs)
            finally:  # whatever failed above, what the runners handed over is written
                self.state.online_s += time.time() - t0
                self.phase_s["online"] = time.time() - t0
                self.replay.flush()
                self.count_stored()
        self._record_slow(final, time.time() - t0)  # the actors' last stats, also for a short run

    def pace_runners(self, stats: list[dict], turns: int, updates: int) -> None:
        """Hold collection to learner.max_turns_per_update turns per online update, plus one step of
        every env: the runners' allowance, split evenly, on top of what each has collected. `turns` and
        `updates` count as the learner's own wait does (every online update against every stored or
        collected turn, earlier job runs' included), so whenever the learner waits for turns the
        runners are allowed more (validate_learner refuses a ratio where they would not be)."""
        ratio = self.cfg.learner.max_turns_per_update
        if not ratio:
            return
        envs = self.cfg.runner.envs_per_runner * len(self.runners)
        share = max(0, math.ceil((ratio * (updates + 1) + envs - turns) / len(self.runners)))
        for runner, s in zip(self.runners, stats):
            runner.allow.remote(s["turns"] + share)

    def _report(self, stats: list[dict], turns: int, elapsed: float, last: dict) -> None:
        rate = turns / max(elapsed, 1e-6)
        ok = [s for s in stats if s["episodes"]]
        success = sum(s["success_rate"] * s["episodes"] for s in ok) / max(1, sum(s["episodes"] for s in ok))
        self.monitor.gauge("env_steps_per_s", rate)
        newest = max((s["policy_version"] or 0 for s in stats), default=0)
        self.monitor.gauge(
            "policy_staleness", self.state.updates - self.state.version_updates.get(str(newest), 0)
        )
        if self.state.updates % 10 == 0 and last:
            self._record_slow(stats, elapsed)
            syntax = [s["syntax_accuracy"] for s in ok]
            self.monitor.log(
                "collection", self.state.env_steps,
                {"success": success, "return": sum(s["mean_return"] for s in ok) / max(1, len(ok)),
                 "syntax_accuracy": sum(syntax) / max(1, len(syntax)), "env_steps_per_s": rate},
            )  # fmt: skip
        end = self.cfg.learner.offline_steps + self.cfg.learner.online_steps
        self.monitor.line(
            self.state.updates, end, "updates",
            f"env steps {self.state.env_steps} ({rate:.1f}/s) success {success:.2f} version {self.state.version}",
        )  # fmt: skip

    def _record_slow(self, stats: list[dict], elapsed: float) -> None:
        """The metrics that cost a round trip to the replay and the samplers: every 10 updates."""
        r = self.replay.stats()
        self.monitor.gauge("replay_size", r["offline"], partition="offline")
        self.monitor.gauge("replay_size", r["online"], partition="online")
        if r["sample_age_turns"] == r["sample_age_turns"]:  # NaN until online turns are sampled
            self.monitor.gauge("replay_sample_age", r["sample_age_turns"])
        samp = ray.get([s.stats.remote() for s in self.samplers])
        self.monitor.gauge("sampler_tokens_per_s", sum(s["tokens"] for s in samp) / max(elapsed, 1e-6))
        self.monitor.record_actors(stats, samp)

    def summary(self, wall_s: float) -> dict:
        s = self.state
        results = {
            "success_before": s.evals.get("before", float("nan")),
            "success_offline": s.evals.get("offline", float("nan")),
            "success_final": s.evals.get("final", float("nan")),
            **{f"syntax_{k}": s.eval_syntax.get(k, float("nan")) for k in ("before", "offline", "final")},
            "env_steps": s.env_steps,
            "episodes": s.episodes,
            "turns_acknowledged": self.retired_acked
            + sum(st["acked_turns"] for st in self.last_stats.values()),
            "runner_restarts": self.restarts["runner"],
            "learner_restarts": self.restarts["learner"],
            "env_steps_per_s": s.env_steps / s.online_s if s.online_s else 0.0,
            "lora_versions": s.version,
            "sync_s_median": statistics.median(s.sync_s) if s.sync_s else float("nan"),
            "updates": s.updates,
            "runner_nodes": len({st["node_id"] for st in ray.get([r.stats.remote() for r in self.runners])}),
            # the engine's cold start: backend construction in the slowest sampler
            "sampler_startup_s": max(
                st["startup_s"] for st in ray.get([x.stats.remote() for x in self.samplers])
            ),
            "phase_s": self.phase_s,
            "wall_s": wall_s,
        }
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        return results

    def shutdown(self) -> None:
        self.learner.shutdown()
        for a in self.runners + self.samplers:
            ray.kill(a)


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Run (or continue) the job described by `cfg`; returns the results written to results.json."""
    t0 = time.time()
    d = Driver(cfg, resume)
    d.phase_s["start"] = time.time() - t0
    try:
        if not resume and cfg.eval.before:
            d.evaluate("before")
        d.offline_phase()
        if "offline" not in d.state.evals:
            d.publish()
            d.evaluate("offline")
            d.checkpoint()
        d.online_phase()
        if cfg.learner.online_steps:
            d.evaluate("final")
        else:  # no online update: the final policy is the offline one, already evaluated (greedy)
            for evals in (d.state.evals, d.state.eval_syntax):
                evals["final"] = evals["offline"]
        d.checkpoint()
        results = d.summary(time.time() - t0)
        d.monitor.finish()
        print("\n" + table([(k, v) for k, v in results.items()]), flush=True)  # the command's result
        log.info(
            "results: %s; plots: %s/collection.png, learning.png; TensorBoard: tensorboard --logdir %s",
            d.run_dir / "results.json", d.run_dir, d.run_dir / "tensorboard",
        )  # fmt: skip
        return results
    finally:
        d.shutdown()
