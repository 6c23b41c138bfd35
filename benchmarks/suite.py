"""The paper's environment suite, learned: per env, the dataset's own success and, on that same data with
the same updates and evaluation episodes, four methods, each with greedy success and syntax accuracy
on held-out seeds. Every run is the real job, `vlmq train --config configs/<env>.yaml`, with overrides:

- sft_plain: `learner.filter=none learner.critic_coef=0 learner.online_steps=0` (the paper's baseline:
  no critic loss shapes the shared LoRA);
- sft: `learner.filter=none learner.online_steps=0` (the same code as AFSFT, filter none);
- afsft and afsft_online: one run as configured; its evaluation after the offline phase is afsft, its
  final one afsft_online (so online is measured against exactly the offline policy it started from).

The two SFT runs also set `eval.before=false`: the untrained model's greedy episodes are the same in
every run (a LoRA starts at zero), and the AFSFT run plays them (its cell's wall time includes them,
theirs do not since 2026-12-07).

The dataset is collected once per env (`vlmq data collect --config`) and every run loads it
(`data.path`). A seed is the learner's and the replay's (init of LoRA and heads, batch draws); model
and data stay. MiniWoB is a set of click tasks (CLICK_SET below), one dataset and run per task; its
method rows are the median over the tasks per seed (`--tasks` runs a subset; the entry's "tasks_run"
names the ones its rows are over), and each task's own rows are kept under "tasks".

    .venv/bin/python benchmarks/suite.py --envs blackjack [--seeds 0 1 2] [--set learner.offline_steps=700]
    .venv/bin/python benchmarks/suite.py --table   # the results file as the docs' table

A run replaces the (env, seed) cells it measures in benchmarks/results/suite.json and keeps the others,
so the table fills one env and one seed at a time. Wall time is recorded per cell; afsft's is the run
up to its offline evaluation. A run folder with checkpoints but no results (a suite stopped mid-run) is
resumed from its last checkpoint, and its cells' wall times are then the resumed part's.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from replay.datasets import info  # noqa: E402
from vlmq.config import load_config  # noqa: E402

log = logging.getLogger("suite")
ENVS = ("numberline", "blackjack", "ezpoints", "points24", "babyai", "miniwob")
# Click tasks the oracle solves every time (benchmarks/results/envs.json), so the data can hold
# successes; the config trains the first, the suite all of them.
CLICK_SET = ("click-button", "click-link", "click-dialog", "click-tab", "click-test-2", "click-option")
METHODS = {
    "sft_plain": [
        "learner.filter=none",
        "learner.critic_coef=0",
        "learner.online_steps=0",
        "eval.before=false",
    ],
    "sft": ["learner.filter=none", "learner.online_steps=0", "eval.before=false"],
    "afsft_online": [],
}
OUT = REPO / "benchmarks" / "results" / "suite.json"


def vlmq(*args: str) -> float:
    """One `vlmq` command in a fresh process (Ray starts and stops with it); its wall time."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "vlmq.cli", *args], cwd=REPO, check=True)
    return time.time() - t0


def run_task(
    config: str, name: str, seed: int, sets: list[str], root: Path, methods: list[str], base: bool = False
) -> dict:
    """The dataset (collected once under root/name) and every method on it for one seed: {method:
    {success, syntax, wall_s}} plus {"dataset": {success, syntax}}; with `base`, also the untrained
    model's greedy evaluation ({"base": {success, syntax}}, the afsft_online run's first one)."""
    data = root / name / "dataset"
    if not (data / "meta.json").exists():
        vlmq("data", "collect", "--config", config, "--out", str(data), *sets)
    d = info(str(data))
    cells: dict = {"dataset": {"success": d["success_rate"], "syntax": 1 - d["syntax_error_rate"]}}
    for method in methods:
        extra = METHODS[method]
        run = f"{name}-{method}-s{seed}"
        # a run stopped before its results (a killed suite) continues from its last checkpoint; its
        # wall time is then the resumed part's alone
        stopped = (root / run / "checkpoints" / "latest").exists() and not (
            root / run / "results.json"
        ).exists()
        resume = ["--resume"] if stopped else []
        if stopped:
            log.warning("%s stopped before its results: resuming it from its last checkpoint", run)
        wall = vlmq(
            "train", *resume, "--config", config, f"out_dir={root}", f"name={run}", f"data.path={data}",
            f"learner.seed={seed}", f"replay.seed={seed}", *sets, *extra,
        )  # fmt: skip
        res = json.loads((root / run / "results.json").read_text())
        cells[method] = {"success": res["success_final"], "syntax": res["syntax_final"], "wall_s": wall}
        if method == "afsft_online" and base:
            cells["base"] = {"success": res["success_before"], "syntax": res["syntax_before"]}
        if method == "afsft_online":
            p = res["phase_s"]
            # a resumed run has no evaluation before, and no offline phase if it resumed online
            offline_s = sum(p.get(k, 0.0) for k in ("start", "eval_before", "offline", "eval_offline"))
            cells["afsft"] = {
                "success": res["success_offline"],
                "syntax": res["syntax_offline"],
                "wall_s": offline_s,
            }
        log.info("%s seed %d %s: %s", name, seed, method, cells[method])
    return cells


def merge(entry: dict, seed: int, cells: dict) -> None:
    """Put one seed's cells into the env's entry: lists aligned with entry["seeds"]."""
    seeds = sorted({*entry.get("seeds", []), seed})
    old = entry.get("seeds", [])
    for method, vals in cells.items():
        row = entry.setdefault(method, {})
        for key, v in vals.items():
            by_seed = dict(zip(old, row.get(key, [])))
            by_seed[seed] = round(v, 4) if key != "wall_s" else round(v, 1)
            row[key] = [by_seed[s] for s in seeds if s in by_seed]
    entry["seeds"] = seeds


ROWS = {"dataset": "the dataset", "sft_plain": "SFT, no critic (sft_plain)", "sft": "SFT (filter none)",
        "afsft": "AFSFT offline", "afsft_online": "AFSFT offline, then online"}  # fmt: skip


def table(out: dict) -> str:
    """suite.json as the paper lays its tables out: a row per method, a column per env, each cell the
    mean greedy success over the seeds run (syntax accuracy in brackets) and the seed count."""
    envs = [e for e in ENVS if e in out["envs"]]
    lines = ["| method | " + " | ".join(envs) + " |", "|---|" + "---|" * len(envs)]
    for method, name in ROWS.items():
        cells = []
        for e in envs:
            row = out["envs"][e].get(method)
            if not row:
                cells.append("")
                continue
            s, y = statistics.mean(row["success"]), statistics.mean(row["syntax"])
            cells.append(f"{s:.2f} ({y:.2f}), {len(row['success'])} seed{'s' * (len(row['success']) > 1)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="a subset, for an ablation (afsft_online also gives afsft)")  # fmt: skip
    ap.add_argument("--tasks", nargs="+", default=list(CLICK_SET), choices=CLICK_SET,
                    help="MiniWoB: a subset of the click set; its rows are the median over these")  # fmt: skip
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run, e.g. data.episodes=500")
    ap.add_argument("--root", default=str(REPO / "runs" / "suite"), help="where datasets and runs go")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--table", action="store_true", help="print the results file as a markdown table; run nothing"
    )
    args = ap.parse_args()
    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {"gamma": None, "envs": {}}
    if args.table:
        print(table(out))
        return
    root = Path(args.root)
    for env in args.envs:
        config = str(REPO / "configs" / f"{env}.yaml")
        cfg = load_config(config, args.set)
        out["gamma"] = cfg.learner.gamma
        entry = out["envs"].setdefault(env, {})
        t0 = time.time()
        for seed in args.seeds:
            if env == "miniwob":
                tasks = {
                    t: run_task(
                        config, f"miniwob-{t}", seed, [*args.set, f"env.id=miniwob:{t}"], root, args.methods
                    )
                    for t in args.tasks
                }
                for t, cells in tasks.items():
                    merge(entry.setdefault("tasks", {}).setdefault(t, {}), seed, cells)
                first = tasks[args.tasks[0]]
                cells = {
                    m: {k: statistics.median(c[m][k] for c in tasks.values()) for k in first[m]}
                    for m in first
                }
                entry["tasks_run"] = list(args.tasks)
            else:
                cells = run_task(config, env, seed, args.set, root, args.methods)
            merge(entry, seed, cells)
            entry["overrides"] = args.set
            entry["wall_s"] = round(entry.get("wall_s", 0.0) + time.time() - t0, 1)
            t0 = time.time()
            out_path.write_text(json.dumps(out, indent=1))  # each seed lands as it finishes
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
