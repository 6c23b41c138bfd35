"""The `make run` job on each sampler engine -> benchmarks/results/sampler_engines.json.

Runs `vlmq train --config configs/numberline.yaml` once per backend (a fresh process and local Ray
each), with only `sampler.backend` changed, and records per engine: the greedy successes, the wall
time, the time per phase (start, evals, offline, online) and the engine's cold start (building the
backend inside the sampler actor). What the engine saves is the difference of the sampler-bound
phases (the evals and online collection); what it costs is its cold start.

Usage: python benchmarks/sampler_engines.py [--backends hf vllm] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sampler_engines.json"
KEEP = ("success_before", "success_offline", "success_final", "updates", "env_steps", "lora_versions")


def run(backend: str, overrides: list[str]) -> dict:
    name = f"engines-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "vlmq.cli", "train", "--config", "configs/numberline.yaml"]
    cmd += [f"sampler.backend={backend}", f"name={name}", *overrides]
    env = dict(
        os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1"
    )
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    process_s = time.time() - t0
    results = json.loads((ROOT / "runs" / name / "results.json").read_text())
    phases = results["phase_s"]
    return {
        **{k: results[k] for k in KEEP},
        "wall_s": results["wall_s"],
        "process_s": process_s,  # the command's wall time, interpreter start and Ray shutdown included
        "sampler_startup_s": results["sampler_startup_s"],
        "phase_s": phases,
        "sampler_bound_s": sum(t for p, t in phases.items() if p.startswith("eval_") or p == "online"),
        "run": name,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for every run")
    args = ap.parse_args()
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    out.update({"config": "configs/numberline.yaml", "overrides": args.set, "cpus": os.cpu_count()})
    engines = out.setdefault("engines", {})
    for backend in args.backends:
        engines[backend] = run(backend, args.set)
        print(backend, json.dumps(engines[backend]), flush=True)
        if "hf" in engines and "vllm" in engines:
            hf, vl = engines["hf"], engines["vllm"]
            out["vllm_saves_s"] = hf["sampler_bound_s"] - vl["sampler_bound_s"]
            out["vllm_costs_s"] = vl["sampler_startup_s"] - hf["sampler_startup_s"]
            out["vllm_wall_minus_hf_s"] = vl["wall_s"] - hf["wall_s"]
        OUT.write_text(
            json.dumps(out, indent=2) + "\n"
        )  # after each engine: a cut-off run keeps what it measured


if __name__ == "__main__":
    main()
