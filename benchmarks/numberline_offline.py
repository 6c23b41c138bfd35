"""Science check: offline AFSFT vs SFT on random-policy NumberLine data (the paper's claim, in small).

NumberLine with obs_mode "both" (image + the state in words): a random-initialised tiny model cannot
learn to read digits from pixels on a CPU in minutes, so the state is also given as text. 2,000
random-policy episodes; the tiny VLM on CPU; 3 seeds; AFSFT and SFT train on the same data for the
same number of steps (SFT is `filter="none"`, the same code); each is evaluated greedily on 200
held-out episodes (seeds from EvalConfig.seed). Writes benchmarks/results/numberline_offline.json.

    .venv/bin/python benchmarks/numberline_offline.py [--steps N] [--seeds 0 1 2] [--episodes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402

from actors.collect import play  # noqa: E402
from envs import make_env  # noqa: E402
from envs.base import format_action  # noqa: E402
from learner.batch import build_batch  # noqa: E402
from learner.processing import encode_prompt, text_to_gen_ids  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from replay.store import ImageStore, open_root, read_folder  # noqa: E402
from replay.turn import Turn, rows_to_turns  # noqa: E402
from vlmq.config import DataConfig, EnvConfig, EvalConfig, LearnerConfig, ModelConfig, RunConfig  # noqa: E402
from vlmq.tiny_model import build_tiny_model  # noqa: E402

OBS_MODE = "both"
# Chosen after the diagnosis in docs/learner.md ("NumberLine science check"): LoRA on the MLPs too
# (the critic must combine the move with the two digits), the critic loss weighted up and batches of
# 128 (else the actor's noise on random moves drowns the critic's signal in the shared LoRA), 400 SFT
# updates while the critic learns, a filter that keeps tokens the critic cannot tell from the
# average. Gamma 0.9: every token of a turn regresses on the turn's end target (td_lambda 1), V is the
# value head, the critic loss weighs 10 (30 drowns the actor at gamma 0.9), the filter is the exp
# weight exp(5 A / reward range) and both rates decay by a cosine over the run (docs/learner.md,
# "The critic across turns").
BASE_LEARNER = dict(
    batch_size=128,
    lr=3e-3,
    critic_lr=1e-2,
    gamma=0.9,
    td_lambda=1.0,
    tau=0.2,
    critic_coef=40.0,  # the critic loss is in reward-range units: 10 in raw units, as measured
    sft_warmup_steps=400,
    filter="exp",
    beta=5.0,
    lr_decay_steps=700,
)
BASE_MODEL: dict = dict(
    lora_r=16,
    lora_alpha=32,
    lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)


def collect(
    episodes: int, seed: int, env_id: str = "numberline", obs_mode: str = OBS_MODE
) -> tuple[list[Turn], float]:
    """Scripted-policy episodes as replay Turns, through the env runner (text actions; the learner
    tokenizes them + EOS). BENCH_POLICY picks the policy (default random)."""
    cfg = RunConfig(
        env=EnvConfig(id=env_id, obs_mode=obs_mode),
        data=DataConfig(policy=os.environ.get("BENCH_POLICY", "random")),
    )
    turns, _ = play(cfg, range(seed, seed + episodes), seed)
    # One array per distinct image: the game has few states, the data many turns.
    canon: dict[bytes, object] = {}
    for t in turns:
        t.images = [canon.setdefault(i.tobytes(), i) for i in t.images]
        t.next_images = [canon.setdefault(i.tobytes(), i) for i in t.next_images]
    ends = [t for t in turns if t.terminated or t.truncated]
    return turns, sum(t.success for t in ends) / episodes


def load_turns(root: str, version: int | None = None) -> list[Turn]:
    """The turns of a dataset folder or a run's replay shard folder, optionally of one policy version
    (the analyses of a finished run in offline_probe.py and online_malformed.py)."""
    table, _ = read_folder(root)
    if version is not None:
        table = table.filter(pc.equal(table["policy_version"], version))
    fs, path = open_root(root)
    return rows_to_turns(table, ImageStore(fs, f"{path}/images").get)


@torch.no_grad()
def evaluate(learner: Learner, episodes: int, seed: int, max_new_tokens: int = 16) -> dict:
    """Greedy transformers generation from the learner's model, all episodes in lock step (left-padded)."""
    model, proc = learner.model.peft, learner.processor
    tok = proc.tokenizer
    model.eval()
    envs = [make_env("numberline", obs_mode=OBS_MODE) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    live, success, syntax = list(range(episodes)), [False] * episodes, []
    while live:
        enc = [encode_prompt(proc, *envs[i].prompt(obs[i])) for i in live]
        width = max(len(e["input_ids"]) for e in enc)
        ids = torch.full((len(enc), width), tok.pad_token_id)
        att = torch.zeros_like(ids)
        for r, e in enumerate(enc):
            ids[r, width - len(e["input_ids"]) :] = torch.tensor(e["input_ids"])
            att[r, width - len(e["input_ids"]) :] = 1
        images = {k: torch.cat([e[k] for e in enc]) for k in enc[0] if k != "input_ids"}
        out = model.generate(
            input_ids=ids,
            attention_mask=att,
            **images,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
        still = []
        for i, text in zip(live, texts):
            obs[i], _, term, trunc, info = envs[i].step(text)
            syntax.append(info["syntax_ok"])
            if term or trunc:
                success[i] = info["success"]
            else:
                still.append(i)
        live = still
    return {"success": sum(success) / episodes, "syntax": sum(syntax) / len(syntax)}


def start_states(seed: int, resets: int) -> list[tuple[tuple, str]]:
    """The distinct states of `resets` held-out resets: ((messages, images), expert action) each."""
    env, states = make_env("numberline", obs_mode=OBS_MODE), {}
    for e in range(seed, seed + resets):
        obs, _ = env.reset(seed=e)
        states.setdefault(obs.text, (env.prompt(obs), env.expert_action()))
    return list(states.values())


@torch.no_grad()
def answer_heads(learner: Learner, messages: list, images: list, gen_ids: list[int]):
    """Policy logits (K, V) and the ensemble-mean Q of the online and of the target heads (K, V) at each
    token of one answer, as in training."""
    turn = Turn("probe", 0, "numberline", 0, messages, images, gen_ids=gen_ids, terminated=True)
    b = build_batch([turn], learner.processor, learner.cfg, learner.prompt_cache)
    learner.model.eval()
    logits, q, q_target, _ = learner.model(
        b.seqs.input_ids, b.seqs.attention_mask, b.seqs.images, b.positions
    )
    return logits[0].float(), q.float().mean(0)[0], q_target.float().mean(0)[0]


def critic_probe(learner: Learner, episodes: int, seed: int) -> dict:
    """Does the critic know the right move? Over the distinct states of `episodes` held-out resets,
    the share where Q(s, expert action) > Q(s, other action) at the action token (ensemble mean),
    and the mean gap. AFSFT cannot beat its critic: at 0.5 the filter keeps a coin flip."""
    tok, states = learner.processor.tokenizer, start_states(seed, episodes)
    agree, gap = 0, 0.0
    for (messages, images), right in states:
        wrong = "-" if right == "+" else "+"
        ids = [text_to_gen_ids(tok, format_action(a)) for a in (right, wrong)]
        k = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)  # the token that names the action
        _, q, _ = answer_heads(learner, messages, images, ids[0])
        d = float(q[k, ids[0][k]] - q[k, ids[1][k]])
        agree, gap = agree + (d > 0), gap + d
    return {"critic_agree": agree / len(states), "critic_gap": gap / len(states), "states": len(states)}


def train(
    model_cfg: ModelConfig,
    turns: list[Turn],
    cfg: LearnerConfig,
    steps: int,
    log_every: int,
    probe: bool = False,
) -> Learner:
    """`steps` updates on uniform draws from `turns`; with `probe`, the NumberLine critic probe at each log."""
    learner = Learner(model_cfg, cfg)
    rng = random.Random(cfg.seed)
    for s in range(1, steps + 1):
        m = learner.step(rng.sample(turns, cfg.batch_size))
        if s % log_every == 0 or s == steps:
            keys = ("actor_loss", "critic_loss", "value_loss", "filter_rate", "q", "v", "adv", "td_error")
            line = " ".join(f"{k} {m[k]:.3f}" for k in keys)
            if probe:
                line += f" probe {critic_probe(learner, 60, EvalConfig().seed)['critic_agree']:.2f}"
            print(f"  [{cfg.filter} seed {cfg.seed}] step {s}: {line}", flush=True)
    return learner


def run_one(job: tuple) -> dict:
    """One (method, seed): train on the shared data, then greedy evaluation on the held-out seeds."""
    method, seed, model_cfg, base, turns, steps, eval_episodes, threads = job
    torch.set_num_threads(threads)
    t0 = time.time()
    # afsft uses the base's filter (binary unless --set filter=exp); sft and sft_plain use none
    cfg = LearnerConfig(seed=seed, **{"filter": "binary", **base})
    if method != "afsft":
        cfg.filter = "none"
    if method == "sft_plain":  # the paper's baseline: no critic loss shapes the LoRA
        cfg.critic_coef = 0.0
    learner = train(model_cfg, turns, cfg, steps, log_every=100, probe=True)
    ev = evaluate(learner, eval_episodes, EvalConfig().seed)
    ev.update(critic_probe(learner, eval_episodes, EvalConfig().seed))
    print(
        f"{method} seed {seed}: greedy success {ev['success']:.3f} syntax {ev['syntax']:.3f} "
        f"critic agrees {ev['critic_agree']:.2f} ({time.time() - t0:.0f} s)",
        flush=True,
    )
    return {"method": method, "seed": seed, **ev}


def parse_sets(items: list[str], cls) -> dict:
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k] = json.loads(v) if v[:1] in "[{" else type(getattr(cls(), k))(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--eval-episodes", type=int, default=200)
    ap.add_argument("--methods", nargs="+", default=["afsft", "sft"], help="afsft | sft | sft_plain")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (one thread each)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "numberline_offline.json"))
    ap.add_argument("--set", nargs="*", default=[], help="LearnerConfig overrides, e.g. lr=1e-3")
    ap.add_argument("--model-set", nargs="*", default=[], help="ModelConfig overrides, e.g. lora_r=16")
    args = ap.parse_args()
    t0 = time.time()
    print(
        "NumberLine, obs_mode 'both' (image + state in words): a random-init tiny VLM cannot read digits "
        "from pixels on a CPU in minutes, so the state is also given as text.",
        flush=True,
    )
    base = {**BASE_LEARNER, **parse_sets(args.set, LearnerConfig)}
    model_kw = {**BASE_MODEL, **parse_sets(args.model_set, ModelConfig)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "tiny-vlm", seed=0))
        model_cfg = ModelConfig(path=model_dir, **model_kw)
        turns, random_success = collect(args.episodes, seed=0)
        print(
            f"data: {args.episodes} random episodes, {len(turns)} turns, success {random_success:.3f}",
            flush=True,
        )
        rand = collect(args.eval_episodes, seed=EvalConfig().seed)[1]  # random policy, held-out seeds
        jobs = [
            (m, seed, model_cfg, base, turns, args.steps, args.eval_episodes, 1)
            for seed in args.seeds
            for m in args.methods
        ]
        if args.jobs > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.jobs) as pool:
                runs = pool.map(run_one, jobs, chunksize=1)
        else:
            runs = [run_one(j[:-1] + (2,)) for j in jobs]
    keys = ("success", "syntax", "critic_agree", "critic_gap")
    results: dict = {m: {k: [] for k in keys} for m in args.methods}
    for r in sorted(runs, key=lambda r: r["seed"]):
        for k in keys:
            results[r["method"]][k].append(round(r[k], 4))
    out = {
        "gamma": base["gamma"],
        **results,
        "random_policy": {"success": rand, "train_data_success": random_success},
        "steps": args.steps,
        "wall_s": round(time.time() - t0, 1),
        "config": {
            "learner": base,
            "model": model_kw,
            "episodes": args.episodes,
            "data_policy": os.environ.get("BENCH_POLICY", "random"),
            "turns": len(turns),
            "eval_episodes": args.eval_episodes,
            "eval_seed": EvalConfig().seed,
            "seeds": args.seeds,
            "jobs": args.jobs,
            "obs_mode": OBS_MODE,
        },
        "note": "obs_mode both: image + state in words (a random-init tiny model cannot read digits from "
        "pixels on a CPU in minutes); greedy transformers generation on held-out seeds",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
