"""What a researcher watches: Ray dashboard metrics, TensorBoard, a progress line, end-of-run plots.

Env runners and samplers record what only they see (steps, episodes, success, latency, refused
pushes); the driver records the rest here: learner, replay, versions, rates. Every metric of
`vlmq/metrics.py` (the one table, docs/metrics.md) also goes to TensorBoard under `metrics/<name>`:
the driver's as they are recorded, the runners' and samplers' from their stats (`record_actors`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vlmq.metrics import DRIVER, SPECS, Metrics

log = logging.getLogger(__name__)


class Monitor:
    """Metrics sink of one run: Ray metrics, TensorBoard, history JSON, the progress line."""

    def __init__(self, run_dir: Path, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.metrics = Metrics([n for n, s in SPECS.items() if s.tags == DRIVER], run=run_name, partition="")
        self.step = 0  # TensorBoard's x for the driver's metrics: learner updates
        # counters as TensorBoard shows them: running totals, from 0 (so a counter that never moves is there)
        self.totals = {n: 0.0 for n, s in SPECS.items() if s.tags == DRIVER and s.kind == "counter"}
        for name in self.totals:
            self._tb(name, 0.0)
        self.history: dict[str, list[dict[str, Any]]] = {"updates": [], "collection": [], "eval": []}
        self.t0 = time.time()
        self._last_line = 0.0
        self._phase: tuple[str, float, int] = ("", 0.0, 0)  # name, start time, start count

    def _tb(self, name: str, value: float, partition: str = "") -> None:
        self.tb.add_scalar(f"metrics/{name}" + (f"/{partition}" if partition else ""), value, self.step)

    def gauge(self, name: str, value: float, partition: str = "") -> None:
        self.metrics.set(name, value, partition=partition)
        self._tb(name, value, partition)

    def count(self, name: str, value: float) -> None:
        self.metrics.inc(name, value)
        self.totals[name] += value
        self._tb(name, self.totals[name])

    def observe(self, name: str, value: float) -> None:
        self.metrics.observe(name, value)
        self._tb(name, value)

    def record_actors(self, runners: list[dict], samplers: list[dict]) -> None:
        """The runners' and samplers' metrics, from their `stats()`, to TensorBoard (summed or
        averaged over the actors; each actor's own series is on the dashboard, tagged)."""
        done = [r for r in runners if r["episodes"]]
        mean = lambda k, rows: sum(r[k] for r in rows) / len(rows) if rows else float("nan")  # noqa: E731
        values = {
            "env_steps": sum(r["env_steps"] for r in runners),
            "episodes": sum(r["episodes"] for r in runners),
            "env_crashes": sum(r["crashes"] for r in runners),
            "episode_return": mean("last_return", done),
            "success_rate": mean("success_rate", done),
            "syntax_accuracy": mean("syntax_accuracy", done),
            "sampler_batch_s": mean("mean_batch_s", samplers),
            "sampler_tokens": sum(s["tokens"] for s in samplers),
            "sampler_version": min((s["version"] for s in samplers), default=0),
            "sampler_sync_s": mean("last_sync_s", samplers),
            "sampler_sync_failures": sum(s["sync_failures"] for s in samplers),
        }
        for name, v in values.items():
            if v == v:  # NaN: nothing to show yet
                self._tb(name, v)

    def phase(self, name: str, start: int) -> None:
        """A new phase of the progress line: rates and ETAs count from here."""
        self._phase = (name, time.time(), start)

    def log(self, kind: str, x: int, values: dict[str, float]) -> None:
        """One row of history (`updates` against update step, `collection` and `eval` against env steps)."""
        row = {"x": x, "wall_s": round(time.time() - self.t0, 3), **values}
        self.history[kind].append(row)
        for k, v in values.items():
            if isinstance(v, int | float):
                self.tb.add_scalar(f"{kind}/{k}", v, x)

    def line(self, done: int, total: int, unit: str, text: str) -> None:
        """The progress line of the phase: `done`/`total` `unit`, their rate since the phase began and the
        ETA at that rate. Rewritten in place on a terminal, else logged (INFO) every 10 s."""
        name, t0, start = self._phase
        now = time.time()
        rate = (done - start) / max(now - t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 * 7 else "?"
        text = f"[{name}] {done}/{total} {unit} ({rate:.2f}/s, ETA {eta_s}) {text}"
        if sys.stdout.isatty():
            print(f"\r{text:<140}", end="", flush=True)
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
