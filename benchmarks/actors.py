"""Actor benchmarks -> benchmarks/results/actors.json.

- scripted.turns_per_s: NumberLine turns/s into a real replay with the scripted backend (random
  policy), 1 and 2 EnvRunners x 8 envs, one sampler.
- pipeline_ratio: one EnvRunner's turns/s through the whole pipeline (envs, sampler actor, replay)
  divided by the sampler actor's own turns/s on the same prompts and batch size, kept busy with two
  calls in flight, measured in the same run (hf backend, tiny VLM, images on).
- lora_push_s: median time from the learner handing adapter bytes to `Sampler.load_adapter` until
  the probe is verified and a generate call is served by the new version.

Usage: python benchmarks/actors.py [--vllm] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the `actors` package: take its folder off the path, put the repo root on
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ray  # noqa: E402

from actors.env_runner import EnvRunner  # noqa: E402
from actors.protocol import Request  # noqa: E402
from actors.sampler import Sampler  # noqa: E402
from envs import make_env  # noqa: E402
from learner.weight_sync import Probe, pack  # noqa: E402
from replay.client import start_replay  # noqa: E402
from vlmq.config import RunConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "actors.json"
LORA_TARGETS = r"model\.(text_model\.)?layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"


def random_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A peft LoRA adapter with random A and B, so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def scripted_turns_per_s(runners: int, turns: int, root: str) -> float:
    cfg = RunConfig()
    cfg.model.path = "/nonexistent"
    cfg.sampler.backend = "scripted"
    cfg.runner.num_runners, cfg.runner.envs_per_runner = runners, 8
    replay = start_replay(cfg.replay, root)
    sampler = Sampler.remote(cfg.sampler, cfg.model)
    actors = [EnvRunner.remote(cfg, [sampler], replay, i) for i in range(runners)]
    ray.get([a.run.remote(50) for a in actors])  # warm up (imports, first episodes)
    t0 = time.perf_counter()
    stats = ray.get([a.run.remote(turns) for a in actors])
    dt = time.perf_counter() - t0
    for a in actors + [sampler]:
        ray.kill(a)
    return (sum(s["turns"] for s in stats) - 50 * runners) / dt


def pipeline_and_push(model_dir: Path, rounds: int, backend: str, work: Path) -> dict:
    cfg = RunConfig()
    cfg.model.path = str(model_dir)
    cfg.sampler.backend = backend
    cfg.runner.envs_per_runner = 8
    # batches of exactly one group (4) in both measurements: the sampler never merges the runner's two
    # groups into one bigger (cheaper per turn) batch, so the ratio compares like with like
    cfg.sampler.max_batch = cfg.runner.envs_per_runner // cfg.runner.pipeline_groups
    sampler = Sampler.remote(cfg.sampler, cfg.model, None, 0)
    ray.get(sampler.ping.remote())
    out: dict = {"backend": backend}

    if backend == "hf":
        # Runner windows and sampler-alone windows alternate, so a change in machine load hits both.
        group = cfg.runner.envs_per_runner // cfg.runner.pipeline_groups  # the runner's batch size
        env = make_env(cfg.env.id, cfg.env.obs_mode)
        reqs = []
        for seed in range(group):
            obs, _ = env.reset(seed=seed)
            messages, images = env.prompt(obs)
            reqs.append(
                Request(
                    messages, images, obs.legal_actions, None, cfg.sampler.temperature, cfg.sampler.max_tokens
                )
            )

        def sampler_window(calls: int) -> tuple[int, float]:
            """The sampler alone on the same prompts, two calls in flight so it is never idle."""
            t0 = time.perf_counter()
            inflight = [sampler.generate.remote(reqs), sampler.generate.remote(reqs)]
            for _ in range(calls - 2):
                ray.get(inflight.pop(0))
                inflight.append(sampler.generate.remote(reqs))
            ray.get(inflight)
            return calls * group, time.perf_counter() - t0

        def runner_window(runner, n: int) -> tuple[int, float]:
            before = ray.get(runner.stats.remote())["turns"]
            t0 = time.perf_counter()
            st = ray.get(runner.run.remote(n))
            return st["turns"] - before, time.perf_counter() - t0

        runners = {
            "replay": EnvRunner.remote(cfg, [sampler], start_replay(cfg.replay, str(work / "replay-hf")), 0),
            "no_replay": EnvRunner.remote(cfg, [sampler], None, 0),
        }
        for r in runners.values():
            ray.get(r.run.remote(16))  # warm up
        sampler_window(4)
        # windows S R S R' S R S R' ... S: each runner window is compared with the sampler windows
        # on either side of it; the median over windows resists the load spikes of a shared machine
        per_window = 64
        seq = ["replay", "no_replay"] * rounds
        samp = [sampler_window(per_window // group)]
        runs = []
        for key in seq:
            runs.append((key, runner_window(runners[key], per_window)))
            samp.append(sampler_window(per_window // group))
        stps = [n / dt for n, dt in samp]
        ratios = {"replay": [], "no_replay": []}
        for i, (key, (n, dt)) in enumerate(runs):
            ratios[key].append((n / dt) / ((stps[i] + stps[i + 1]) / 2))
        for key, r in runners.items():
            out[f"runner_wait_fraction_{key}"] = ray.get(r.stats.remote())["wait_fraction"]
            ray.kill(r)
        tps = {
            k: sum(n for kk, (n, _) in runs if kk == k) / sum(dt for kk, (_, dt) in runs if kk == k)
            for k in ratios
        }
        out.update(
            runner_turns_per_s=tps["replay"],
            runner_no_replay_turns_per_s=tps["no_replay"],
            sampler_turns_per_s=sum(n for n, _ in samp) / sum(dt for _, dt in samp),
            pipeline_ratio=statistics.median(ratios["replay"]),
            pipeline_ratio_no_replay=statistics.median(ratios["no_replay"]),
            pipeline_ratios_per_window=ratios,
        )

    # LoRA pushes: bytes in, verified, then served
    from actors.hf_backend import HFBackend

    ref = HFBackend(str(model_dir))  # the learner side: reference log-probs for the probe
    env = make_env(cfg.env.id, cfg.env.obs_mode)
    messages, images = env.prompt(env.reset(seed=123)[0])
    gen_ids = ref.tokenizer.encode('{"action": "+"}', add_special_tokens=False) + [ref.eos_id]
    probe_req = [Request(messages, images, ["-", "+"], None, 0.0, 4)]
    times = []
    for v in range(1, 6):
        adapter = random_adapter(model_dir, work / f"{backend}-adapter{v}", seed=v)
        ref.load_lora(v, str(adapter))
        probe = Probe(messages, images, gen_ids, ref.score(messages, images, gen_ids, v))
        data = pack(adapter)
        t0 = time.perf_counter()
        ok = ray.get(sampler.load_adapter.remote(v, data, probe))
        served = ray.get(sampler.generate.remote(probe_req))[0].version
        times.append(time.perf_counter() - t0)
        if not ok or served != v:
            raise RuntimeError(f"push of version {v} failed: ok={ok}, served version {served}")
    out["lora_push_s"] = statistics.median(times)
    out["lora_push_all_s"] = times
    ray.kill(sampler)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm", action="store_true", help="also time LoRA pushes on the vLLM backend")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_scripted, rounds = (300, 1) if args.quick else (3000, 4)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    from vlmq.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result: dict = {"scripted": {"turns_per_s": {}}}
        for m in (1, 2):
            result["scripted"]["turns_per_s"][str(m)] = scripted_turns_per_s(
                m, n_scripted, str(work / f"replay{m}")
            )
            print("scripted", m, result["scripted"]["turns_per_s"][str(m)], flush=True)
        model_dir = build_tiny_model(work / "tiny-vlm", arch="idefics3", seed=0)
        hf = pipeline_and_push(model_dir, rounds, "hf", work)
        print("hf", hf, flush=True)
        result["pipeline_ratio"] = hf["pipeline_ratio"]
        result["lora_push_s"], result["lora_push_backend"] = hf["lora_push_s"], "hf"
        result["details"] = {"hf": hf}
        if args.vllm:
            try:
                vl = pipeline_and_push(model_dir, rounds, "vllm", work)
                print("vllm", vl, flush=True)
                result["details"]["vllm"] = vl
                result["lora_push_s"], result["lora_push_backend"] = vl["lora_push_s"], "vllm"
            except Exception as err:  # report, keep the hf figure
                result["details"]["vllm_error"] = repr(err)[:500]
    result["setup"] = {
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "env": "numberline, obs_mode both (image + text)",
        "runner": "8 envs per runner, 2 pipeline groups (sampler batches of 4), turns go to a 1-shard replay",
        "hf": "tiny Idefics3 VLM, float32, temperature 1, max_tokens 32",
        "quick": args.quick,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
