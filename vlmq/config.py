"""Every setting of a vlmq run, as typed dataclasses in one place, and every rule on their values.

A run is described by a YAML file whose sections mirror these classes, plus dotted overrides
(`learner.lr=3e-4`). Unknown keys and wrong types are errors that name the key and list the valid
ones, because a silently ignored typo in an RL config costs a researcher a day of compute. Values the
types allow but the code does not (`runner.envs_per_runner: 0 must be >= 1`) are checked here too, by
`validate`, at load time: before Ray starts, not in an actor's constructor once collection has begun.
The dataclasses stay plain; the driver and the actors, whose configs may be built by hand, call the same
validators.
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


CARD_ENV_IDS = ("numberline", "ezpoints", "points24", "blackjack")  # envs.CARD_ENVS: a class for each
ENV_IDS = " | ".join(CARD_ENV_IDS) + " | babyai:<BabyAI level> | miniwob:<task>"  # envs.make_env's ids
POLICY_KINDS = (
    "random",
    "expert",
    "epsilon",
    "habit",
    "malformed",
)  # data-collection policies (envs/policies.py)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank (LoRAConfig)


@dataclass
class ModelConfig:
    path: str = "runs/tiny-vlm"  # a local folder (save_pretrained) or, where a hub is reachable, a hub id
    text_only: bool = False  # a causal LM instead of an image-text-to-text model
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    freeze_vision: bool = True
    num_critics: int = 2
    build_tiny: bool = True  # build the tiny offline model at `path` when it does not exist


@dataclass
class EnvConfig:
    id: str = "numberline"  # numberline | ezpoints | points24 | blackjack | babyai:<Level> | miniwob:<task>
    obs_mode: Literal["image", "text", "both"] = "both"
    history: int = 0  # last H turns shown in the prompt
    syntax_penalty: float = -1.0
    max_steps: int = 0  # 0: the env's own time limit
    # worked turns (the expert on fixed states, each a different move) before every prompt: a pretrained
    # model copies a shown format (docs/models.md); a random model gains nothing from them
    demo: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReplayConfig:
    root: str = ""  # local path or fsspec URL; empty: <run dir>/replay
    num_shards: int = 1
    online_capacity: int = 50_000  # turns per shard in the FIFO online partition
    flush_turns: int = 256  # a shard writes a segment when this many turns are unflushed ...
    flush_seconds: float = 5.0  # ... or when the oldest unflushed turn is this old
    offline_fraction: float = 0.5  # share of each batch drawn from the offline partition in phase 2
    offline_fraction_final: float = -1.0  # < 0: constant; else linear schedule to this over phase 2
    image_cache_mb: int = 256  # decoded images a shard keeps in memory (LRU) to serve samples
    max_restarts: int = -1  # Ray restarts of a dead shard actor (-1: forever); it reloads from disk
    detached: bool = False  # True: shards outlive the driver (reconnect by root); False: die with the job
    num_cpus: float = 0.0  # CPUs a shard actor reserves; 0 lets shards share nodes with everything else
    seed: int = 0  # seeds batch draws: same data and seed, same batches (a resumed job restarts them)
    # custom Ray resources each actor asks for, e.g. {"collector": 1}: pins the role to nodes that
    # advertise them (`ray start --resources='{"collector": 8}'`)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class LearnerConfig:
    lr: float = 3e-4
    critic_lr: float = 3e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # turns per update (global, across workers)
    num_workers: int = 1  # data-parallel workers (gloo on CPU, NCCL on GPU)
    grad_clip: float = 1.0
    warmup_steps: int = 0  # linear learning-rate warmup (0: none)
    # Cosine decay of both learning rates to lr_final_ratio of their value over the first
    # lr_decay_steps updates, constant after (0: no decay). The tiny model's offline phase
    # oscillates late at a constant rate (docs/driver.md).
    lr_decay_steps: int = 0
    lr_final_ratio: float = 0.1
    gamma: float = 0.9  # discount per turn
    # The critic's targets inside a turn: lambda-return over its tokens (1: every token regresses on
    # the turn's end target r + gamma V(next prompt); 0: each on the next token's V, docs/learner.md).
    td_lambda: float = 1.0
    # V(s) in targets and advantages: "policy" is sum_a pi(a|s) Q(s,a) over the whole vocabulary, where
    # tokens the data never shows leak in; "expectile" is a value head fit to the data's Q by expectile
    # regression (IQL), which no untrained token reaches (docs/learner.md).
    value: Literal["policy", "expectile"] = "expectile"
    expectile: float = 0.5  # 0.5: V is the data's mean value (evaluation); toward 1: its best actions
    tau: float = 0.01  # Polyak rate of the target critic heads
    # > 0: a running average of every trained parameter (LoRA, critic and value heads) at this rate
    # per update, and the samplers are served the average (Polyak-Ruppert). Against exact Q^pi on
    # NumberLine it took seed 0's Spearman from 0.96 to 0.99, seeds 1 and 2 stayed (0.90, 0.96; critic_ablation/)
    param_average: float = 0.0
    # the weight of the critic's (and value head's) squared error, read in units of the reward range,
    # against the actor's nats (1 in raw units for rewards in [-1, 1]; configs/numberline.yaml uses 40)
    critic_coef: float = 4.0
    reward_scale: float = 1.0  # the replay stores raw rewards; the learner scales them
    # Lowest and highest raw reward of one turn, syntax penalty included. They set the units:
    # advantages are read in units of (max - min), so `threshold` and `beta` mean the same in every
    # env, and with value "policy" the critic heads start at reward_min / (1 - gamma).
    reward_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    # AFSFT weight from A / (reward range): "exp" min(exp(beta a), w_max) (default: a binary cut at one
    # threshold either starves the format or keeps wrong moves, docs/learner.md), "binary"
    # 1[a > threshold], "none" plain SFT (w = 1)
    filter: Literal["binary", "exp", "none"] = "exp"
    threshold: float = 0.0
    # The actor trains as SFT (w = 1) for this many first updates while the critic learns: a model
    # that cannot yet write the output format (the tiny random one) would otherwise have its
    # end-of-turn tokens filtered and V leak onto untrained tokens (docs/learner.md).
    sft_warmup_steps: int = 0
    beta: float = 5.0
    w_max: float = 20.0
    offline_steps: int = 500
    online_steps: int = 500
    checkpoint_every: int = 200
    publish_every: int = 50  # a new LoRA version for the samplers every k updates
    max_updates_per_turn: float = 0.5  # phase 2: at most this many updates per collected turn
    # phase 2, the other bound: runners pause once they are this many turns per update ahead of the
    # learner (0: never). On shared CPUs collection that outruns the learner only slows it (docs/driver.md)
    max_turns_per_update: float = 0.0
    # a learner worker that dies: the group restarts from the latest checkpoint, this many times a job
    max_restarts: int = 3
    # GPUs per learner worker: -1 one when the cluster advertises GPUs, none when it does not (the
    # cluster decides, not the driver's node: a head is often CPU-only); >= 0 exactly that many
    num_gpus: float = -1
    # CPUs per learner worker: Ray reserves them and torch runs as many threads. On a CPU-only machine
    # the learner is what the offline phase waits on (docs/driver.md); more than one thread pays there
    num_cpus: int = 1
    # custom Ray resources each actor asks for, e.g. {"collector": 1}: pins the role to nodes that
    # advertise them (`ray start --resources='{"collector": 8}'`)
    resources: dict[str, float] = field(default_factory=dict)
    # bf16 autocast of the backbone (the heads, V and log-softmax stay float32): "cuda" on GPUs only,
    # "always" on CPUs too (15x slower than float32 on this project's CPUs, which lack AVX-512 and
    # AMX: docs/models.md), "never"
    bf16: Literal["cuda", "always", "never"] = "cuda"
    seed: int = 0


@dataclass
class SamplerConfig:
    # vLLM serves the policy (the design); hf (transformers generate) stays for tests and machines
    # without vLLM; scripted plays data.policy with no model. Measured against hf on the tiny model
    # and 2 CPU cores: docs/actors.md, "Sampler engines".
    backend: Literal["vllm", "hf", "scripted"] = "vllm"
    num_samplers: int = 1
    # CPUs per sampler where the cluster has no GPUs: Ray reserves them and vLLM or torch runs as many
    # threads (a 135M model's collection on one core: 64 tokens/s, benchmarks/pretrained.py)
    num_cpus: int = 1
    temperature: float = 1.0
    max_tokens: int = 32
    resident_versions: int = 3  # LoRA versions kept loaded so in-flight episodes finish on their own
    probe_tolerance: float = 1e-3  # max abs log-prob difference accepted after a LoRA push
    policy: str = "random"  # scripted backend: random | expert | epsilon:<p>[:<m>] | habit:<f>:<p>[:<m>] | malformed:<p>
    gpu_memory_utilization: float = 0.5
    timeout_s: float = 120.0  # a runner's wait for one sampler call before it retries
    retries: int = 3  # sampler call retries before the runner gives up (raises)
    # micro-batching of the hf and scripted backends (vLLM batches all requests in flight itself):
    batch_wait_s: float = 0.002  # how long the sampler waits for more callers
    max_batch: int = 256  # requests per backend call at most
    # custom Ray resources each actor asks for, e.g. {"collector": 1}: pins the role to nodes that
    # advertise them (`ray start --resources='{"collector": 8}'`)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class RunnerConfig:
    num_runners: int = 1
    envs_per_runner: int = 8
    epsilon: float = 0.0  # probability of replacing the model's action by a random legal one
    send_every: int = 16  # turns buffered before they go to replay
    pipeline_groups: int = 2  # envs split in groups: some step while the others' actions generate
    max_restarts: int = 100  # dead runners the driver replaces in one job before it fails (-1: forever)
    # custom Ray resources each actor asks for, e.g. {"collector": 1}: pins the role to nodes that
    # advertise them (`ray start --resources='{"collector": 8}'`)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class DataConfig:
    path: str = ""  # an existing dataset folder; empty: collect one
    # a scripted policy (random | expert | epsilon:<p>[:<m>] | habit:<f>:<p>[:<m>] | malformed:<p>), or `model`: the base
    # model at model.path, served by the run's sampler (sampler.backend, sampler.temperature)
    policy: str = "random"
    episodes: int = 2000
    seed: int = 0


@dataclass
class EvalConfig:
    episodes: int = 200
    seed: int = 1_000_000  # held-out seeds start here; training seeds stay below
    every: int = 0  # evaluate every N updates (0: only at phase ends)
    # evaluate the untrained policy first; a LoRA starts at zero, so every run on one model and seeds
    # plays the same greedy episodes there, and a benchmark needs them once (success_before is then NaN)
    before: bool = True
    # 0: greedy, the reported number; > 0 samples, to tell a policy that loops under argmax (the same
    # state, the same move) from one that does not know the way
    temperature: float = 0.0


@dataclass
class RunConfig:
    name: str = "numberline"
    out_dir: str = "runs"
    # Where checkpoints go: a folder or any fsspec URL; empty: <out_dir>/<name>/checkpoints. The learner
    # writes its part from its own node, so on nodes that share no filesystem this is shared storage.
    checkpoint_root: str = ""
    seed: int = 0  # the tiny model's init when the driver builds it; data, replay and learner have their own
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint_root or str(self.run_dir / "checkpoints")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; YAML ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got str {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    valid = [f.name for f in dataclasses.fields(obj)]
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in valid:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(valid)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            _merge(current, value, f"{key}.")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_override(item: str) -> dict[str, Any]:
    """`learner.lr=3e-4` -> {"learner": {"lr": 3e-4}}; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    path, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict[str, Any] = {}
    node = out
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (after the file its `base` key names), then the overrides, each
    checked against the schema."""
    return parse_config(Path(path).read_text() if path is not None else "", str(path), overrides)


def _layers(text: str, source: str, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """A config's mappings, base first: `base: numberline.yaml` (a path relative to the file) puts
    that config under this one, so an env's config states only what differs from the recipe."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return [data]
    path = (Path(source).parent / str(base)).resolve()
    if path in seen:
        raise ConfigError(f"{source}: base {base!r} is already in this chain of bases (a cycle)")
    if not path.is_file():
        raise ConfigError(f"{source}: base {base!r} is not a config file ({path})")
    return [*_layers(path.read_text(), str(path), (*seen, path)), data]


def parse_config(text: str, source: str = "<text>", overrides: list[str] | None = None) -> RunConfig:
    """`load_config` of YAML text (a checkpoint's config.yaml read from any storage)."""
    cfg = RunConfig()
    start = (Path(source).resolve(),) if Path(source).is_file() else ()
    for data in _layers(text, source, start):
        _merge(cfg, data, "")
    for item in overrides or []:
        _merge(cfg, parse_override(item), "")
    validate(cfg)
    return cfg


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


def _ranges(section: Any, name: str, **rules: str) -> None:
    """Each field against its rule, written as the error states it: `>= 1`, `> 0`, `in [0, 1)`.
    NaN fails every rule."""
    for key, rule in rules.items():
        v = getattr(section, key)
        if rule.startswith("in "):
            lo, hi = (float(x) for x in rule[4:-1].split(","))
            ok = (lo <= v if rule[3] == "[" else lo < v) and (v <= hi if rule[-1] == "]" else v < hi)
        else:
            op, bound = rule.split()
            ok = _OPS[op](v, float(bound))
        if not ok:
            raise ConfigError(f"{name}.{key}: {v!r} must be {rule}")


def _resources(section: Any, name: str) -> None:
    res = section.resources
    if not isinstance(res, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in res.items()
    ):
        raise ConfigError(f"{name}.resources: {res!r} must map resource names to amounts >= 0")
    if {"CPU", "GPU"} & set(res):
        raise ConfigError(
            f"{name}.resources: {res!r}: CPU and GPU are set by vlmq; name custom resources only"
        )


def parse_policy(spec: str, key: str = "policy") -> tuple[str, float, float, float]:
    """`random | expert | epsilon:<p>[:<m>] | habit:<f>:<p>[:<m>] | malformed:<p>` -> (kind, p, m, f):
    m the share of malformed outputs mixed into a noisy expert, f the share of states with a habit (0
    unless given); `envs.policies.make_policy` builds it."""
    kind, _, arg = spec.partition(":")
    if kind not in POLICY_KINDS:
        raise ConfigError(f"{key} {spec!r}: kind must be one of {list(POLICY_KINDS)}")
    if kind in ("random", "expert"):
        if arg:
            raise ConfigError(f"{key} {spec!r}: {kind} takes no argument")
        return kind, 0.0, 0.0, 0.0
    names = {"epsilon": ["p", "m"], "habit": ["f", "p", "m"], "malformed": ["p"]}[kind]
    need = 2 if kind == "habit" else 1
    form = f"{kind}:" + ":".join(f"<{n}>" for n in names[:need]) + "".join(f"[:<{n}>]" for n in names[need:])
    bad = ConfigError(f"{key} {spec!r}: expected {form}, numbers in [0, 1]")
    args = arg.split(":")
    if not need <= len(args) <= len(names):
        raise bad
    try:
        given = dict(zip(names, map(float, args)))
    except ValueError:
        raise bad from None
    for name, x in given.items():
        if not 0.0 <= x <= 1.0:
            raise ConfigError(f"{key} {spec!r}: {name}={x} is outside [0, 1]")
    return kind, given["p"], given.get("m", 0.0), given.get("f", 0.0)


def validate_model(cfg: ModelConfig) -> None:
    _ranges(cfg, "model", lora_r=">= 1", lora_alpha=">= 1", lora_dropout="in [0, 1)", num_critics=">= 1")
    if not cfg.lora_targets:
        raise ConfigError("model.lora_targets: [] must name at least one module")


def validate_env(cfg: EnvConfig) -> None:
    """The id's form only: whether a BabyAI level or MiniWoB task exists is `envs.make_env`'s to say."""
    kind, _, name = cfg.id.partition(":")
    if cfg.id not in CARD_ENV_IDS and not (kind in ("babyai", "miniwob") and name):
        raise ConfigError(f"env.id: {cfg.id!r} is not one of {ENV_IDS}")
    _ranges(cfg, "env", history=">= 0", max_steps=">= 0", demo=">= 0")


def validate_replay(cfg: ReplayConfig) -> None:
    _ranges(
        cfg, "replay", num_shards=">= 1", online_capacity=">= 1", flush_turns=">= 1", flush_seconds="> 0",
        offline_fraction="in [0, 1]", offline_fraction_final="<= 1", image_cache_mb=">= 0",
        max_restarts=">= -1", num_cpus=">= 0",
    )  # fmt: skip
    _resources(cfg, "replay")


def validate_learner(cfg: LearnerConfig) -> None:
    _ranges(
        cfg, "learner", lr="> 0", critic_lr="> 0", weight_decay=">= 0", batch_size=">= 1", num_workers=">= 1",
        grad_clip="> 0", warmup_steps=">= 0", lr_decay_steps=">= 0", lr_final_ratio="in [0, 1]",
        gamma="in [0, 1)", td_lambda="in [0, 1]", expectile="in (0, 1)", tau="in [0, 1]", param_average="in [0, 1)",
        critic_coef=">= 0",
        reward_scale="> 0", sft_warmup_steps=">= 0", beta=">= 0", w_max="> 0", offline_steps=">= 0",
        online_steps=">= 0", checkpoint_every=">= 1", publish_every=">= 1", max_updates_per_turn="> 0",
        max_turns_per_update=">= 0", max_restarts=">= 0", num_gpus=">= -1", num_cpus=">= 1",
    )  # fmt: skip
    _resources(cfg, "learner")
    if len(cfg.reward_range) != 2 or not cfg.reward_range[0] < cfg.reward_range[1]:
        raise ConfigError(f"learner.reward_range: {cfg.reward_range} must be [min, max] with min < max")
    if 0 < cfg.max_turns_per_update * cfg.max_updates_per_turn < 1:
        raise ConfigError(
            f"learner.max_turns_per_update: {cfg.max_turns_per_update} must be 0 or >= 1 / "
            f"learner.max_updates_per_turn ({1 / cfg.max_updates_per_turn:g}): runners and learner would "
            "each wait for the other"
        )
    if cfg.batch_size < cfg.num_workers:
        raise ConfigError(
            f"learner.batch_size: {cfg.batch_size} must be >= learner.num_workers ({cfg.num_workers}): "
            "every worker takes a share of each batch"
        )


def validate_sampler(cfg: SamplerConfig) -> None:
    _ranges(
        cfg, "sampler", num_samplers=">= 1", num_cpus=">= 1", temperature=">= 0", max_tokens=">= 1", resident_versions=">= 1",
        probe_tolerance=">= 0", gpu_memory_utilization="in (0, 1]", timeout_s="> 0", retries=">= 0",
        batch_wait_s=">= 0", max_batch=">= 1",
    )  # fmt: skip
    _resources(cfg, "sampler")
    parse_policy(cfg.policy, "sampler.policy")


def validate_runner(cfg: RunnerConfig) -> None:
    _ranges(
        cfg, "runner", num_runners=">= 1", envs_per_runner=">= 1", epsilon="in [0, 1]", send_every=">= 1",
        pipeline_groups=">= 1", max_restarts=">= -1",
    )  # fmt: skip
    _resources(cfg, "runner")


def validate_data(cfg: DataConfig) -> None:
    _ranges(cfg, "data", episodes=">= 1")
    if cfg.policy != "model":
        parse_policy(cfg.policy, "data.policy")


def validate_eval(cfg: EvalConfig) -> None:
    # training seeds are taken modulo eval.seed, and the driver's probe plays seed eval.seed - 1
    _ranges(cfg, "eval", episodes=">= 1", seed=">= 1", every=">= 0", temperature=">= 0")


def validate(cfg: RunConfig) -> None:
    """Every section, then the rules across sections. `load_config` calls it, and so do the driver, the
    env runner and `collect`, which may be handed a RunConfig built in Python."""
    validate_model(cfg.model)
    validate_env(cfg.env)
    validate_replay(cfg.replay)
    validate_learner(cfg.learner)
    validate_sampler(cfg.sampler)
    validate_runner(cfg.runner)
    validate_data(cfg.data)
    if cfg.data.policy == "model" and cfg.sampler.backend == "scripted":
        raise ConfigError(
            "data.policy model collects with the model at model.path, but sampler.backend is scripted "
            "(no model); set sampler.backend=hf or vllm"
        )
    validate_eval(cfg.eval)
    lo, hi = cfg.learner.reward_range
    if not lo <= cfg.env.syntax_penalty <= hi:
        raise ConfigError(
            f"env.syntax_penalty {cfg.env.syntax_penalty} lies outside learner.reward_range {[lo, hi]}: the "
            "range must hold every reward a turn can earn (it sets the critic's start and the filter's units)"
        )
    r = cfg.model.lora_r
    if cfg.sampler.backend == "vllm" and r > 16 and r not in VLLM_LORA_RANKS:  # the sampler asks max(16, r)
        raise ConfigError(
            f"model.lora_r: {r} must be <= 16 or one of {[k for k in VLLM_LORA_RANKS if k > 16]} with "
            "sampler.backend vllm (vLLM's max_lora_rank)"
        )


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, sections in schema order (`load_config` reads it back)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Every run writes the config it actually ran with."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_config(cfg))
