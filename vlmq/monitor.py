"""What a researcher watches: Ray dashboard metrics, TensorBoard, a console line, end-of-run plots.

Env runners and samplers record what only they see (steps, episodes, success, latency, refused
pushes); the driver records the rest here: learner, replay, versions, rates. docs/metrics.md lists all.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

_GAUGES = {
    "env_steps_per_s": "Environment steps per second, all runners",
    "sampler_tokens_per_s": "Generated tokens per second, all samplers",
    "replay_size": "Turns held by the replay, by partition",
    "replay_sample_age": "Mean age of sampled online turns, in collected turns",
    "policy_version": "Newest LoRA version served by the samplers",
    "policy_staleness": "Learner updates since the version that generated the newest turns",
    "actor_loss": "AFSFT (or SFT) loss",
    "critic_loss": "Token-level TD loss",
    "filter_acceptance": "Share of generated tokens the advantage filter keeps",
    "eval_success": "Greedy success on held-out seeds",
}
_COUNTERS = {
    "updates": "Learner updates",
    "sync_failures": "LoRA versions refused by a sampler's probe check",
}
_HISTOGRAMS = {
    "sampler_latency_s": ("Sampler generate() latency per batch", [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30]),
    "sync_latency_s": ("LoRA push to verified serving", [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10]),
}


class Monitor:
    """Metrics sink of one run: Ray metrics (prefixed `vlmq_`), TensorBoard, history JSON, console."""

    def __init__(self, run_dir: Path, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        tags = {"run": run_name}
        self.gauges = {
            k: Gauge(f"vlmq_{k}", description=d, tag_keys=("run", "partition")) for k, d in _GAUGES.items()
        }
        self.counters = {
            k: Counter(f"vlmq_{k}", description=d, tag_keys=("run",)) for k, d in _COUNTERS.items()
        }
        self.hists = {
            k: Histogram(f"vlmq_{k}", description=d, boundaries=b, tag_keys=("run",))
            for k, (d, b) in _HISTOGRAMS.items()
        }
        for m in [*self.gauges.values(), *self.counters.values(), *self.hists.values()]:
            m.set_default_tags(tags)
        self.history: dict[str, list[dict[str, Any]]] = {"updates": [], "collection": [], "eval": []}
        self.t0 = time.time()
        self._last_line = 0.0

    def gauge(self, name: str, value: float, partition: str = "") -> None:
        self.gauges[name].set(float(value), tags={"partition": partition})

    def count(self, name: str, value: float) -> None:
        if value > 0:
            self.counters[name].inc(float(value))

    def observe(self, name: str, value: float) -> None:
        self.hists[name].observe(float(value))

    def log(self, kind: str, x: int, values: dict[str, float]) -> None:
        """One row of history (`updates` against update step, `collection` and `eval` against env steps)."""
        row = {"x": x, "wall_s": round(time.time() - self.t0, 3), **values}
        self.history[kind].append(row)
        for k, v in values.items():
            if isinstance(v, int | float):
                self.tb.add_scalar(f"{kind}/{k}", v, x)

    def line(self, text: str) -> None:
        """The live progress line: rewritten in place on a terminal, else logged (INFO) every 10 s."""
        now = time.time()
        if sys.stdout.isatty():
            print(f"\r{text:<120}", end="", flush=True)
        elif now - self._last_line > 10:
            log.info(text)
            self._last_line = now

    def finish(self) -> Path:
        self.tb.flush()
        path = self.run_dir / "history.json"
        path.write_text(json.dumps(self.history, indent=1))
        self._plots()
        return path

    def _plots(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [
            ("collection", ["success", "return", "syntax_accuracy"], "env steps", "collection.png"),
            ("updates", ["actor_loss", "critic_loss", "filter_rate"], "updates", "learning.png"),
        ]
        for kind, keys, xlabel, fname in panels:
            rows = self.history[kind]
            fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
            for ax, key in zip(axes, keys):
                pts = [(r["x"], r[key]) for r in rows if key in r]
                if kind == "collection":
                    pts += [(r["x"], r[key]) for r in self.history["eval"] if key in r]
                if pts:
                    ax.plot(*zip(*sorted(pts)), marker=".")
                ax.set_title(key)
                ax.set_xlabel(xlabel)
            fig.tight_layout()
            fig.savefig(self.run_dir / fname, dpi=80)
            plt.close(fig)


def table(rows: list[tuple[str, Any]]) -> str:
    """A two-column plain-text table for the end-of-run summary."""
    width = max(len(k) for k, _ in rows)
    out = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for k, v in rows:
        out.append(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(out)
