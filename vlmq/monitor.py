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
        self.history: dict[str, list[dict[str, Any]]] = {
            "updates": [], "collection": [], "eval": [], "pushes": [], "phases": [], "faults": []
        }  # fmt: skip
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

    def phase(self, name: str, start: int, env_steps: int = 0) -> None:
        """A new phase of the progress line (rates and ETAs count from here), and of the history: the
        plots mark where it began, at update `start` and env step `env_steps`."""
        self._phase = (name, time.time(), start)
        row = {"name": name, "x": start, "env_steps": env_steps, "wall_s": round(time.time() - self.t0, 3)}
        self.history["phases"].append(row)

    def log(self, kind: str, x: int, values: dict[str, float]) -> None:
        """One row of history: `updates` and `pushes` (with `version`, `env_steps`) against update step,
        `collection` and `eval` against env steps."""
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
        plot_history(self.history, self.run_dir)
        return path


def plot_history(history: dict[str, list[dict[str, Any]]], out_dir: Path, prefix: str = "") -> list[Path]:
    """`collection.png` (success, return, syntax against env steps: collection as a line, the greedy
    evaluations as points) and `learning.png` (losses, filter acceptance against updates), each marking
    where the online phase began and every LoRA version pushed. Drawn at the end of a run, and again
    from its history.json by `vlmq plot`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(ax, rows: list[dict], key: str, **style) -> None:
        pts = sorted((r["x"], r[key]) for r in rows if key in r)
        if pts:
            ax.plot(*zip(*pts), **style)

    online = [p for p in history.get("phases", []) if p["name"] == "online"]
    pushes = history.get("pushes", [])
    figures = [  # file, panels, x label, where a push or a phase sits on that x axis
        ("collection.png", ["success", "return", "syntax_accuracy"], "env steps", "env_steps"),
        ("learning.png", ["actor_loss", "critic_loss", "filter_rate"], "updates", "x"),
    ]
    paths = []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for fname, keys, xlabel, at in figures:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
        for ax, key in zip(axes, keys):
            if fname == "collection.png":
                series(ax, history["collection"], key, marker=".", label="collection (sampled)")
                evals = dict(ls="none", marker="D", color="C3", label="eval (greedy, held-out seeds)")
                series(ax, history["eval"], key, **evals)
            else:
                series(ax, history["updates"], key, lw=0.8, label="learner update")
            for i, p in enumerate(pushes):
                ax.axvline(p[at], color="0.6", ls=":", lw=1, label=None if i else "LoRA version pushed")
                ax.text(p[at], 1.0, f"v{p['version']}", transform=ax.get_xaxis_transform(), fontsize=6,
                        color="0.4", ha="center", va="bottom")  # fmt: skip
            for p in online:
                ax.axvline(p[at], color="k", ls="--", lw=1, label="online phase begins")
            ax.set_title(key, pad=10)
            ax.set_xlabel(xlabel)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels) or 1, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        paths.append(Path(out_dir) / f"{prefix}{fname}")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def table(rows: list[tuple[str, Any]]) -> str:
    """A two-column plain-text table for the end-of-run summary; a dict value gives a row per key."""
    flat: list[tuple[str, Any]] = []
    for k, v in rows:
        flat += [(f"{k}.{kk}", vv) for kk, vv in v.items()] if isinstance(v, dict) else [(k, v)]
    rows = flat
    width = max(len(k) for k, _ in rows)
    out = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for k, v in rows:
        out.append(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(out)
