"""The learner: one `Learner` per process, and `LearnerGroup`, W of them as Ray actors in data parallel.

Data parallel is plain torch.distributed (gloo on CPU, NCCL on GPU) between Ray actors: every worker
holds the whole model (LoRA + heads are small), takes 1/W of the global batch, divides its sums by the
global token count, and the gradients are summed with one all-reduce, so a W-worker step is the
1-worker step on the same global batch up to float summation order. No DDP wrapper: the only
collective is that all-reduce, which keeps peft, the extra heads and the no-grad passes out of DDP's way.

Checkpoint: `model.safetensors` (LoRA, critic and target heads), `optimizer.safetensors` (AdamW
moments), `rng.safetensors` (torch RNG) and `learner.json` (step, optimizer groups, scheduler, config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load, save

from learner.batch import PromptCache, build_batch, encode_prompt
from learner.losses import q_floor, values, vlmq_losses
from learner.model import DualHeadModel
from learner.model_files import local_model
from learner.processing import load_processor
from replay.store import open_root
from vlmq.config import LearnerConfig, ModelConfig, validate_learner


def lr_factor(cfg: LearnerConfig, step: int) -> float:
    """Learning-rate multiplier at an update: linear warmup times cosine decay to lr_final_ratio."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.lr_decay_steps <= 0:
        return warm
    done = min(step / cfg.lr_decay_steps, 1.0)
    r = cfg.lr_final_ratio
    return warm * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * done)))


class Learner:
    """Model, optimizer and update step on one device; rank r of `world_size` when data parallel."""

    def __init__(self, model_cfg: ModelConfig, cfg: LearnerConfig, model_files: tuple | None = None):
        validate_learner(cfg)  # a config built by hand, not by load_config, is checked too
        model_cfg = local_model(model_cfg, model_files)  # a node that cannot see model.path: the shipped copy
        self.model_cfg, self.cfg = model_cfg, cfg
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.processor = load_processor(model_cfg.path, model_cfg.text_only)
        # Same seed, same init on all ranks. Summed over the whole vocabulary (value "policy"), V would
        # take in the initial Q of tokens the data never shows: they start at the lowest return. The
        # value head never sees them, so its Q and V start at 0.
        q_init = q_floor(cfg) if cfg.value == "policy" else 0.0
        self.model = DualHeadModel(model_cfg, seed=cfg.seed, q_init=q_init).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in self.model.peft.parameters() if p.requires_grad], "lr": cfg.lr},
                {
                    "params": [*self.model.critics.parameters(), *self.model.value.parameters()],
                    "lr": cfg.critic_lr,
                },
            ],
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(cfg, s))
        self.steps = 0
        # the running average of the trained parameters (learner.param_average > 0), from the init
        trained = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in trained.items()} if cfg.param_average else {}
        self.sft_cfg = dataclasses.replace(cfg, filter="none")
        self.prompt_cache = PromptCache()

    def init_distributed(self, rank: int, world_size: int, init_method: str) -> None:
        """Join the process group (gloo on CPU, NCCL on GPU); all ranks call this together."""
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
        self.rank, self.world_size = rank, world_size

    def pid(self) -> int:
        return os.getpid()

    def free_address(self) -> str:
        """tcp://<this node>:<free port>, the rendezvous that rank 0 hosts."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return f"tcp://{ray.util.get_node_ip_address()}:{s.getsockname()[1]}"

    def _autocast(self):
        on = self.cfg.bf16 == "always" or (self.cfg.bf16 == "cuda" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    @torch.no_grad()
    def next_values(self, batch) -> torch.Tensor:
        """V_target(s_{t+1,1}) per row (B,): the next prompt's value, 0 where the turn terminated (and
        everywhere when critic_coef is 0, where no critic trains)."""
        next_v = torch.zeros(batch.actions.shape[0], device=self.device)
        if batch.next_prompts is not None and self.cfg.critic_coef > 0:
            p = batch.next_prompts
            with self._autocast():
                logits, _, q_target, v_head = self.model.heads_at(
                    p.input_ids, p.attention_mask, p.images, p.last
                )
            next_v[batch.next_rows] = values(logits, q_target, v_head, self.cfg)[:, 0]
        return next_v

    def step(self, turns: list) -> dict[str, float]:
        """One update on this worker's share of the global batch; metrics are of the whole batch."""
        self.model.train()
        batch = build_batch(turns, self.processor, self.cfg, self.prompt_cache).to(self.device)
        next_v = self.next_values(batch)
        with self._autocast():
            s = batch.seqs  # one backbone pass feeds the LM head, the critics and the target heads
            logits, q, q_target, v_head = self.model(s.input_ids, s.attention_mask, s.images, batch.positions)
        denom = self._all_reduce(batch.mask.sum()).clamp(min=1.0)
        loss, metrics = vlmq_losses(
            logits,
            q,
            q_target,
            batch.actions,
            batch.mask,
            batch.last,
            batch.rewards,
            batch.discounts,
            next_v,
            self.cfg if self.steps >= self.cfg.sft_warmup_steps else self.sft_cfg,
            denom=denom,
            v_head=v_head,
        )
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.world_size > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            torch.nn.utils.vector_to_parameters(flat, [p.grad for p in params])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.model.update_targets(self.cfg.tau)
        if self.average:
            own = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, a in self.average.items():
                    a.lerp_(own[n], self.cfg.param_average)
        self.steps += 1
        names = sorted(metrics)
        totals = self._all_reduce(torch.stack([metrics[k].float() for k in names]))
        out = {k: float(v) for k, v in zip(names, totals)}
        critic = out["critic_loss"] + out["value_loss"]
        out.update(loss=out["actor_loss"] + self.cfg.critic_coef * critic)
        out.update(grad_norm=float(grad_norm), lr=self.scheduler.get_last_lr()[0], step=self.steps)
        return out

    @contextlib.contextmanager
    def averaged(self):
        """The model with the parameter average in place of its weights (as is without one): what the
        samplers are served and a sampler's check is computed on. Training resumes from the live weights."""
        if not self.average:
            yield
            return
        own = dict(self.model.named_parameters())
        live = {n: own[n].detach().clone() for n in self.average}
        with torch.no_grad():
            for n, a in self.average.items():
                own[n].copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in live.items():
                    own[n].copy_(t)

    @torch.no_grad()
    def reference_logprobs(self, messages: list, images: list, gen_ids: list[int]) -> list[float]:
        """float32 log pi(y_k | prompt, y_<k) of a given continuation: the probe a sampler must match."""
        self.model.eval()
        enc = encode_prompt(self.processor, messages, list(images or []))
        ids = torch.tensor([enc["input_ids"] + list(gen_ids)], device=self.device)
        images = {k: torch.as_tensor(v).to(self.device) for k, v in enc.items() if k != "input_ids"}
        start = len(enc["input_ids"]) - 1
        positions = torch.arange(start, start + len(gen_ids), device=self.device)[None]
        with self.averaged():  # the weights the samplers are served
            logits = self.model(ids, torch.ones_like(ids), images, positions)[0]
        logp = torch.log_softmax(logits.float(), -1)[0].gather(-1, ids[0, start + 1 :, None])
        return logp[:, 0].tolist()

    def adapter_bytes(self) -> bytes:
        """The policy's LoRA as the bytes every sampler loads (learner/weight_sync.py)."""
        from learner.weight_sync import adapter_bytes

        with self.averaged():
            return adapter_bytes(self.model.peft)

    # -- checkpoint -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything that changes during training: trainable weights, the target heads and the
        parameter average."""
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        named.update({f"targets.{n}": p for n, p in self.model.targets.named_parameters()})
        named.update({f"average.{n}": a for n, a in self.average.items()})
        return {n: p.detach().cpu().clone() for n, p in named.items()}

    def save(self, url: str | Path) -> None:
        """Rank 0 writes (every rank holds the same state) to a folder or fsspec URL, from its own node."""
        if self.rank != 0:
            return
        fs, d = open_root(str(url))
        fs.makedirs(d, exist_ok=True)
        opt = self.optimizer.state_dict()
        files = {
            "model.safetensors": self.state_tensors(),
            "optimizer.safetensors": {
                f"{i}.{k}": v.cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()
            },
            "rng.safetensors": {"torch": torch.get_rng_state()},
        }
        for name, tensors in files.items():
            fs.pipe_file(f"{d}/{name}", save(tensors))
        meta = {
            "step": self.steps,
            "param_groups": opt["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "learner": dataclasses.asdict(self.cfg),
            "model": dataclasses.asdict(self.model_cfg),
        }
        fs.pipe_file(f"{d}/learner.json.tmp", json.dumps(meta, indent=1).encode())
        fs.mv(f"{d}/learner.json.tmp", f"{d}/learner.json")  # written last: a folder with it is complete

    def load(self, url: str | Path) -> None:
        fs, d = open_root(str(url))
        if not fs.exists(f"{d}/learner.json"):
            raise FileNotFoundError(f"{url}: not a learner checkpoint (no learner.json)")
        meta = json.loads(fs.cat_file(f"{d}/learner.json"))
        tensors = load(fs.cat_file(f"{d}/model.safetensors"))
        own = dict(self.model.named_parameters())
        own.update({f"targets.{n}": p for n, p in self.model.targets.named_parameters()})
        own.update({f"average.{n}": a for n, a in self.average.items()})
        missing = set(self.state_tensors()) - set(tensors)
        if missing:
            raise ValueError(f"{url}: checkpoint lacks {sorted(missing)[:5]} (a different model config?)")
        with torch.no_grad():
            for n, t in tensors.items():
                own[n].copy_(t)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in load(fs.cat_file(f"{d}/optimizer.safetensors")).items():
            i, k = key.split(".", 1)
            state.setdefault(int(i), {})[k] = v.to(self.device)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(load(fs.cat_file(f"{d}/rng.safetensors"))["torch"])
        self.steps = meta["step"]


PLACEMENT_TIMEOUT_S = 600  # an autoscaling cluster may take minutes to add the learner's GPU nodes


def worker_gpus(cfg: LearnerConfig, cluster: dict[str, float]) -> float:
    """GPUs per learner worker: `learner.num_gpus` when set (>= 0), else 1 when the cluster's
    resources include a GPU and 0 when they do not, whatever torch says on the driver's node."""
    if cfg.num_gpus >= 0:
        return cfg.num_gpus
    return 1.0 if cluster.get("GPU", 0) >= 1 else 0.0


class LearnerDied(RuntimeError):
    """A learner worker died (its process, or its node). The group is lost: data parallel workers
    wait on each other, so the driver restarts all of them from the latest checkpoint."""


class LearnerGroup:
    """W `Learner` Ray actors in data parallel, the API the driver uses:
    `step(turns)`, `adapter_bytes()`, `save(dir)`, `load(dir)`, `reference_logprobs(messages, images,
    gen_ids)`. A call raises `LearnerDied` as soon as any worker is dead: with W > 1 the others would
    wait in the all-reduce for it forever."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: LearnerConfig,
        model_files: tuple | None = None,
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        validate_learner(cfg)
        W = cfg.num_workers
        gpus = worker_gpus(cfg, ray.cluster_resources())
        # what each worker takes: any node that has it may hold a worker (and must see the checkpoints)
        self.bundle = bundle = {"CPU": cfg.num_cpus, **({"GPU": gpus} if gpus else {}), **cfg.resources}
        # one bundle per worker, packed onto as few nodes as fit: the all-reduce is fastest within a node
        self.pg = placement_group([bundle] * W, strategy="PACK")
        if not self.pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(
                f"the learner's {W} worker(s) need {bundle} each and the cluster could not place them in "
                f"{PLACEMENT_TIMEOUT_S} s (it has {ray.cluster_resources()}); set learner.num_gpus / num_workers"
            )
        # Ray sets the worker's OMP_NUM_THREADS to its CPUs, so torch runs that many threads
        actor = ray.remote(num_cpus=cfg.num_cpus, num_gpus=gpus, resources=cfg.resources)(Learner)
        self.workers = [
            actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i)).remote(
                model_cfg, cfg, model_files
            )
            for i in range(W)
        ]
        if W > 1:
            init = self._get([self.workers[0].free_address.remote()])[0]
            self._get([w.init_distributed.remote(r, W, init) for r, w in enumerate(self.workers)])

    def _get(self, refs: list) -> list:
        """ray.get that fails fast: the first dead worker raises LearnerDied, whatever the order."""
        import ray

        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
            return ray.get(refs)
        except ray.exceptions.RayActorError as err:
            raise LearnerDied(f"a learner worker died: {err}") from err

    def step(self, turns: list) -> dict[str, float]:
        W = len(self.workers)
        if len(turns) < W:
            raise ValueError(f"a batch of {len(turns)} turns cannot be split over {W} workers")
        shards = [turns[r::W] for r in range(W)]
        return self._get([w.step.remote(s) for w, s in zip(self.workers, shards)])[0]

    def adapter_bytes(self) -> bytes:
        """The current policy's adapter, as bytes from worker 0 (no path crosses nodes)."""
        return self._get([self.workers[0].adapter_bytes.remote()])[0]

    def save(self, url: str) -> None:
        self._get([self.workers[0].save.remote(url)])

    def load(self, url: str) -> None:
        self._get([w.load.remote(url) for w in self.workers])

    def reference_logprobs(self, messages: list, images: list, gen_ids: list[int]) -> list[float]:
        return self._get([self.workers[0].reference_logprobs.remote(messages, images, gen_ids)])[0]

    def pids(self) -> list[int]:
        """The workers' process ids (what an operator, or a chaos test, kills)."""
        return self._get([w.pid.remote() for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []
        ray.util.remove_placement_group(self.pg)
