"""Every metric vlmq records, in one table (docs/metrics.md is this table, checked by a test).

Each process records what only it sees, through `Metrics` (Ray metrics, so the Ray dashboard and each
node's Prometheus export show them): env runners their steps, episodes and success (tag `runner`),
samplers their batches, tokens and adapter loads (tag `sampler`), the driver the learner, the replay,
versions and rates (tag `run`). The driver also writes every one of them to TensorBoard: its own as
it records them, the runners' and samplers' from their `stats()` (vlmq/monitor.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    kind: str  # counter | gauge | histogram
    doc: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


RUNNER, SAMPLER, DRIVER = ("runner",), ("sampler",), ("run", "partition")
SPECS: dict[str, Spec] = {
    # env runners
    "env_steps": Spec("counter", "turns collected", RUNNER),
    "episodes": Spec("counter", "episodes finished", RUNNER),
    "env_crashes": Spec("counter", "envs that raised and were recreated (their partial episode dropped)", RUNNER),
    "episode_return": Spec("gauge", "return of the last finished episode", RUNNER),
    "success_rate": Spec("gauge", "success over the runner's last 100 episodes", RUNNER),
    "syntax_accuracy": Spec("gauge", "share of turns whose output named a legal action, last 100 episodes", RUNNER),
    # samplers
    "sampler_batch_s": Spec("histogram", "backend call latency (one micro-batch; with vLLM, one runner's call)", SAMPLER, (0.01, 0.03, 0.1, 0.3, 1, 3, 10)),
    "sampler_tokens": Spec("counter", "generated tokens", SAMPLER),
    "sampler_version": Spec("gauge", "adapter version served to new requests", SAMPLER),
    "sampler_sync_s": Spec("histogram", "a pushed adapter's load and probe check", SAMPLER, (0.1, 0.3, 1, 3, 10, 30)),
    "sampler_sync_failures": Spec("counter", "pushed versions this sampler refused or failed to load", SAMPLER),
    # the driver
    "updates": Spec("counter", "learner updates", DRIVER),
    "actor_loss": Spec("gauge", "AFSFT (SFT) loss", DRIVER),
    "critic_loss": Spec("gauge", "TD loss", DRIVER),
    "filter_acceptance": Spec("gauge", "mean AFSFT weight over generated tokens", DRIVER),
    "env_steps_per_s": Spec("gauge", "collection rate of all runners in the online phase", DRIVER),
    "sampler_tokens_per_s": Spec("gauge", "generated tokens per second, all samplers", DRIVER),
    "replay_size": Spec("gauge", "turns held by the replay, by partition (offline, online)", DRIVER),
    "replay_sample_age": Spec("gauge", "mean age of sampled online turns, in turns added since", DRIVER),
    "policy_version": Spec("gauge", "newest LoRA version pushed and verified by every sampler", DRIVER),
    "policy_staleness": Spec("gauge", "learner updates since the version that generated the newest turns", DRIVER),
    "sync_latency_s": Spec("histogram", "learner hands over an adapter -> every sampler serves it, verified", DRIVER, (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)),
    "sync_failures": Spec("counter", "pushes refused by at least one sampler", DRIVER),
    "runner_restarts": Spec("counter", "dead env runners replaced by the driver", DRIVER),
    "dropped_turns": Spec("counter", "turns a dead runner had collected but the replay had not acknowledged", DRIVER),
    "learner_restarts": Spec("counter", "learner groups restarted from the latest checkpoint (a worker died)", DRIVER),
    "eval_success": Spec("gauge", "greedy success on held-out seeds, by label (before, offline, final, ...)", DRIVER),
}  # fmt: skip


class Metrics:
    """The Ray metrics of `names` (exported as `ray_vlmq_<name>`), with default tags, set by name."""

    def __init__(self, names: list[str], **default_tags: str):
        from ray.util import metrics

        make = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}
        self.m = {}
        for name in names:
            s = SPECS[name]
            kw = {"boundaries": list(s.boundaries)} if s.kind == "histogram" else {}
            self.m[name] = make[s.kind](f"vlmq_{name}", description=s.doc, tag_keys=s.tags, **kw)
            self.m[name].set_default_tags({k: v for k, v in default_tags.items() if k in s.tags})

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        if value > 0:
            self.m[name].inc(float(value), tags=tags or None)

    def set(self, name: str, value: float, **tags: str) -> None:
        self.m[name].set(float(value), tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self.m[name].observe(float(value), tags=tags or None)
