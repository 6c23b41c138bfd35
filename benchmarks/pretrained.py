"""SmolLM2-135M-Instruct end to end -> benchmarks/results/pretrained.json.

Parts (`--parts`, default all); each lands in the results file as it finishes, so the file fills
piece by piece and a later run keeps what an earlier one measured:

- models: build times of `vlmq model smollm2` and `vlmq model smolvlm`, and transformers' load time.
- learner: seconds per update with the backbone in float32 and under CPU bf16 autocast, from one init
  on the same batches, with both runs' losses (bf16 is kept if the losses agree); and the learner's
  overhead: its seconds per update divided by a bare forward+backward of the same LoRA model on the
  same token rows (the model's own causal-LM loss, the step any SFT trainer takes).
- sampler: generated tokens/s of the vLLM and hf engines alone, in this process, on the same
  prompts (NumberLine's first prompts in SmolLM2's chat template, temperature 1), 8 and 32 requests
  per call (sampler_tokens_per_s is at 32: the configs' envs per runner); vLLM's engine start.
- pipeline: turns/s of one EnvRunner (8 envs, 2 groups in flight) through the Sampler actor (vLLM)
  divided by the engine's own turns/s on the same prompts at the same concurrency (2 calls of 4
  requests in flight) and the same CPU share (one core, in a Ray actor like the sampler's).
- envs: per env (numberline, blackjack) and seed, the columns base (the untrained model's greedy
  evaluation), dataset (the base model's own episodes at temperature 1), sft_plain, afsft and
  afsft_online, through `vlmq train --config configs/smollm2_<env>.yaml` (benchmarks/suite.run_task).
  The dataset is collected first with the sampler on every core (`sampler.num_cpus`): nothing else
  runs then, and the runs reuse it; one already in results/pretrained_data is copied instead.

    .venv/bin/python benchmarks/pretrained.py --parts learner sampler pipeline
    .venv/bin/python benchmarks/pretrained.py --parts envs --envs numberline --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from suite import merge, run_task, vlmq  # noqa: E402

from actors.protocol import Request  # noqa: E402
from envs import make_env  # noqa: E402
from vlmq.config import ModelConfig, load_config  # noqa: E402

log = logging.getLogger("pretrained")
OUT = REPO / "benchmarks" / "results" / "pretrained.json"
KEPT = REPO / "benchmarks" / "results" / "pretrained_data"  # base-model datasets, committed once collected
ENVS = ("numberline", "blackjack")
PARTS = ("models", "learner", "sampler", "pipeline", "envs")
METHODS = ["afsft_online", "sft_plain"]  # afsft_online's run also gives base and afsft
LEARNER_WARMUP = 1


def model_cfg(root: Path) -> ModelConfig:
    """SmolLM2 as configs/smollm2_numberline.yaml loads it, at `root`/smollm2 (built if missing)."""
    path = root / "smollm2"
    if not (path / "config.json").exists():
        vlmq("model", "smollm2", "--out", str(path))
    return dataclasses.replace(
        load_config(REPO / "configs" / "smollm2_numberline.yaml").model, path=str(path)
    )


def prompts(n: int, temperature: float, max_tokens: int) -> list[Request]:
    """NumberLine's first prompt of n seeds, in words (as configs/smollm2_numberline.yaml plays it)."""
    demo = load_config(REPO / "configs" / "smollm2_numberline.yaml").env.demo
    env, reqs = make_env("numberline", "text", demo=demo), []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        messages, images = env.prompt(obs)
        reqs.append(Request(messages, images, obs.legal_actions, None, temperature, max_tokens))
    return reqs


# -- models ------------------------------------------------------------------------------------
def part_models(root: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for kind in ("smollm2", "smolvlm"):
        folder = root / f"build-{kind}"
        out[f"{kind}_build_s"] = vlmq("model", kind, "--out", str(folder))
        out[f"{kind}_bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    t0 = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(root / "build-smollm2", dtype=torch.float32)
    out["smollm2_transformers_load_s"] = time.perf_counter() - t0
    return out


# -- learner -----------------------------------------------------------------------------------
def bare_step(learner, turns) -> float:
    """Seconds of a plain forward+backward of the learner's LoRA model on the batch's token rows, with
    the model's own causal-LM loss (every position, full vocabulary), as any SFT trainer runs it."""
    from learner.batch import build_batch

    s = build_batch(turns, learner.processor, learner.cfg, learner.prompt_cache).seqs
    labels = s.input_ids.masked_fill(s.attention_mask == 0, -100)
    t0 = time.perf_counter()
    with learner._autocast():
        loss = learner.model.peft(input_ids=s.input_ids, attention_mask=s.attention_mask, labels=labels).loss
    loss.backward()
    learner.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def part_learner(root: Path, threads: int, steps: int) -> dict:
    import torch
    from numberline_offline import collect

    from learner.trainer import Learner

    torch.set_num_threads(threads)
    mcfg = model_cfg(root)
    cfg = load_config(REPO / "configs" / "smollm2_numberline.yaml").learner
    cfg = dataclasses.replace(cfg, sft_warmup_steps=0)  # the critic's filter runs from the first step
    turns = collect(40, seed=0, obs_mode="text")[0]
    b = cfg.batch_size
    batches = [turns[i * b : (i + 1) * b] for i in range(LEARNER_WARMUP + steps)]
    out: dict = {"batch_size": b, "threads": threads, "steps": steps}
    for mode, key in (("never", "float32"), ("always", "bf16")):
        learner = Learner(mcfg, dataclasses.replace(cfg, bf16=mode))
        times, losses, bare = [], [], []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            m = learner.step(batch)
            if i >= LEARNER_WARMUP:
                times.append(time.perf_counter() - t0)
                bare.append(bare_step(learner, batch))
            losses.append({k: round(m[k], 5) for k in ("loss", "critic_loss", "value_loss")})
        step_s, bare_s = statistics.median(times), statistics.median(bare)
        out[key] = {"step_s": step_s, "bare_step_s": bare_s, "overhead": step_s / bare_s, "losses": losses}
        log.info("learner %s: %.2f s/update, bare %.2f s", key, step_s, bare_s)
        del learner
    rel = [
        abs(a["loss"] - c["loss"]) / max(abs(c["loss"]), 1e-8)
        for a, c in zip(out["bf16"]["losses"], out["float32"]["losses"])
    ]
    out["bf16_loss_max_rel_diff"] = max(rel)
    agree = max(rel) < 0.05
    faster = out["bf16"]["step_s"] < out["float32"]["step_s"]
    out["kept"] = "bf16" if agree and faster else "float32"
    out["learner_overhead"] = out[out["kept"]]["overhead"]
    return out


# -- sampler -----------------------------------------------------------------------------------
def tokens_per_s(backend, reqs: list[Request], calls: int) -> tuple[float, int]:
    """Generated tokens per second over `calls` calls of `reqs` (after one warm-up call), and the count."""
    backend.generate(reqs, 0)  # warm up
    t0, n = time.perf_counter(), 0
    for _ in range(calls):
        n += sum(len(c.gen_ids) for c in backend.generate(reqs, 0))
    return n / (time.perf_counter() - t0), n


def part_sampler(root: Path, threads: int, batches: tuple[int, ...], calls: int) -> dict:
    """Each engine alone at each batch size (requests per call, all in flight at once)."""
    import torch

    from actors.hf_backend import HFBackend
    from actors.vllm_backend import VLLMBackend

    torch.set_num_threads(threads)
    mcfg = model_cfg(root)
    scfg = load_config(REPO / "configs" / "smollm2_numberline.yaml").sampler
    reqs = prompts(max(batches), scfg.temperature, scfg.max_tokens)
    out: dict = {"calls": calls, "max_tokens": scfg.max_tokens, "threads": threads, "hf": {}, "vllm": {}}
    hf = HFBackend(mcfg.path, text_only=True)
    for b in batches:
        out["hf"][str(b)] = tokens_per_s(hf, reqs[:b], calls)[0]
    del hf
    os.environ["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    vl = VLLMBackend(mcfg.path, text_only=True)
    out["vllm_start_s"] = time.perf_counter() - t0
    for b in batches:
        out["vllm"][str(b)] = tokens_per_s(vl, reqs[:b], calls)[0]
    vl.shutdown()
    log.info("sampler tokens/s: vllm %s, hf %s", out["vllm"], out["hf"])
    return out


# -- pipeline ----------------------------------------------------------------------------------
def part_pipeline(root: Path, turns: int) -> dict:
    import ray

    from actors.env_runner import EnvRunner
    from actors.sampler import Sampler

    mcfg = model_cfg(root)
    cfg = load_config(REPO / "configs" / "smollm2_numberline.yaml", [f"model.path={mcfg.path}"])
    group = cfg.runner.envs_per_runner // cfg.runner.pipeline_groups
    reqs = prompts(group, cfg.sampler.temperature, cfg.sampler.max_tokens)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Engine:
        """The vLLM engine alone on one core (the sampler actor's share), driven from two threads."""

        def __init__(self):
            from actors.vllm_backend import VLLMBackend

            self.backend = VLLMBackend(mcfg.path, text_only=True)

        def turns_per_s(self, n: int) -> float:
            self.backend.generate(reqs, 0)
            calls = max(1, n // (2 * group))
            t0 = time.perf_counter()
            workers = [
                threading.Thread(target=lambda: [self.backend.generate(reqs, 0) for _ in range(calls)])
                for _ in range(2)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return 2 * calls * group / (time.perf_counter() - t0)

    engine = Engine.remote()
    alone = ray.get(engine.turns_per_s.remote(turns))
    ray.kill(engine)
    sampler = Sampler.options(num_cpus=1).remote(cfg.sampler, cfg.model, None, 0)
    ray.get(sampler.ping.remote())
    runner = EnvRunner.options(num_cpus=1).remote(cfg, [sampler], None, 0)
    ray.get(runner.run.remote(2 * group))  # warm up
    before = ray.get(runner.stats.remote())["turns"]
    t0 = time.perf_counter()
    st = ray.get(runner.run.remote(turns))
    through = (st["turns"] - before) / (time.perf_counter() - t0)
    ray.shutdown()
    log.info("pipeline: %.2f turns/s through runner + sampler, %.2f engine alone", through, alone)
    return {
        "runner_turns_per_s": through,
        "engine_turns_per_s": alone,
        "pipeline_ratio_vllm": through / alone,
        "runner_wait_fraction": st["wait_fraction"],
        "turns": turns,
        "setup": f"numberline text, {cfg.runner.envs_per_runner} envs in {cfg.runner.pipeline_groups} groups, "
        f"temperature {cfg.sampler.temperature}, max_tokens {cfg.sampler.max_tokens}, no replay",
    }


# -- envs --------------------------------------------------------------------------------------
def part_envs(
    root: Path, envs: list[str], seeds: list[int], methods: list[str], sets: list[str], out: dict, save
) -> None:
    mcfg = model_cfg(root)
    for env in envs:
        config = str(REPO / "configs" / f"smollm2_{env}.yaml")
        entry = out["envs"].setdefault(env, {})
        data, kept = root / f"smollm2-{env}" / "dataset", KEPT / f"smollm2-{env}"
        if not (data / "meta.json").exists() and (kept / "meta.json").exists():
            # the committed copy (its collection took 82 min on one core), over a stopped run's empty folder
            shutil.copytree(kept, data, dirs_exist_ok=True)
        if not (data / "meta.json").exists():  # the base model plays on every core: nothing else runs
            cores = f"sampler.num_cpus={os.cpu_count()}"
            out.setdefault("collect_s", {})[env] = vlmq(
                "data",
                "collect",
                "--config",
                config,
                "--out",
                str(data),
                f"model.path={mcfg.path}",
                cores,
                *sets,
            )
            save()
        for seed in seeds:
            t0 = time.time()
            cells = run_task(
                config, f"smollm2-{env}", seed, [f"model.path={mcfg.path}", *sets], root, methods, base=True
            )
            merge(entry, seed, cells)
            entry["wall_s"] = round(entry.get("wall_s", 0.0) + time.time() - t0, 1)
            entry["overrides"] = sets
            save()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="envs: a subset")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every envs run")
    ap.add_argument("--root", default=str(REPO / "runs" / "pretrained"), help="models, datasets and runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--learner-steps", type=int, default=6, help="timed updates per mode, after one warm-up")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    root, out_path = Path(args.root).absolute(), Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    out = json.loads(out_path.read_text()) if out_path.exists() else {"model": "smollm2-135m", "envs": {}}

    def save() -> None:
        out_path.write_text(json.dumps(out, indent=1) + "\n")

    for part in args.parts:
        if part == "models":
            out["models"] = part_models(root)
        elif part == "learner":
            out["learner"] = part_learner(root, args.threads, args.learner_steps)
            out["learner_overhead"] = out["learner"]["learner_overhead"]
        elif part == "sampler":
            s = out["sampler"] = part_sampler(root, args.threads, batches=(8, 32), calls=2)
            out["sampler_tokens_per_s"] = {"vllm": s["vllm"]["32"], "hf": s["hf"]["32"]}
        elif part == "pipeline":
            out["pipeline"] = part_pipeline(root, turns=96)
            out["pipeline_ratio_vllm"] = out["pipeline"]["pipeline_ratio_vllm"]
        else:
            part_envs(root, args.envs, args.seeds, args.methods, args.set, out, save)
        out["machine"] = f"{os.cpu_count()} CPU cores, no GPU"
        save()
    print(json.dumps({k: v for k, v in out.items() if k != "envs"}, indent=1))


if __name__ == "__main__":
    main()
