import dataclasses
import functools
import re
from pathlib import Path

import pytest
import yaml

from vlmq.config import ConfigError, load_config, save_config


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nlearner:\n  lr: 0.1\n  batch_size: 4\nenv:\n  id: blackjack\n")
    cfg = load_config(f, ["learner.lr=3e-4", "sampler.backend=scripted", "model.lora_targets=[q_proj]"])
    assert cfg.name == "x"
    assert cfg.learner.lr == pytest.approx(3e-4)
    assert cfg.learner.batch_size == 4
    assert cfg.env.id == "blackjack"
    assert cfg.sampler.backend == "scripted"
    assert cfg.model.lora_targets == ["q_proj"]
    assert cfg.learner.gamma == 0.9  # untouched default


def test_int_accepted_for_float():
    cfg = load_config(None, ["learner.lr=1"])
    assert cfg.learner.lr == 1.0 and isinstance(cfg.learner.lr, float)


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["learner.lrr=0.1"])
    msg = str(err.value)
    assert "learner.lrr" in msg and "lr" in msg and "batch_size" in msg


def test_unknown_section_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lerner:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="'lerner'.*valid keys here: name"):
        load_config(f)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("learner.batch_size=abc", "learner.batch_size: expected int"),
        ("learner.batch_size=1.5", "learner.batch_size: expected int"),
        ("model.text_only=3", "model.text_only: expected true or false"),
        ("sampler.backend=tpu", "sampler.backend: 'tpu' is not one of"),
        ("model.lora_targets=q_proj", "model.lora_targets: expected a list"),
        ("learner=3", "learner: expected a section"),
        ("learner.lr", "not of the form"),
    ],
)
def test_wrong_types_fail_clearly(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(None, [override])


def test_reward_range_must_hold_the_syntax_penalty():
    with pytest.raises(
        ConfigError, match=r"env.syntax_penalty -2.0 lies outside learner.reward_range \[-1.0, 1.0\]"
    ):
        load_config(None, ["env.syntax_penalty=-2"])
    assert (
        load_config(None, ["env.syntax_penalty=-2", "learner.reward_range=[-2, 1]"]).env.syntax_penalty == -2
    )
    with pytest.raises(ConfigError, match=r"learner.reward_range: \[-1.0, 0.0, 1.0\] must be \[min, max\]"):
        load_config(None, ["learner.reward_range=[-1, 0, 1]"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.lora_r=0", "model.lora_r: 0 must be >= 1"),
        ("model.lora_alpha=0", "model.lora_alpha: 0 must be >= 1"),
        ("model.lora_dropout=1", "model.lora_dropout: 1.0 must be in [0, 1)"),
        ("model.num_critics=0", "model.num_critics: 0 must be >= 1"),
        ("model.lora_targets=[]", "model.lora_targets: [] must name at least one module"),
        ("env.id=numberlin", "env.id: 'numberlin' is not one of numberline | ezpoints"),
        ("env.id=babyai", "env.id: 'babyai' is not one of"),
        ("env.id='miniwob:'", "env.id: 'miniwob:' is not one of"),
        ("env.history=-1", "env.history: -1 must be >= 0"),
        ("env.max_steps=-1", "env.max_steps: -1 must be >= 0"),
        ("replay.num_shards=0", "replay.num_shards: 0 must be >= 1"),
        ("replay.online_capacity=0", "replay.online_capacity: 0 must be >= 1"),
        ("replay.flush_turns=0", "replay.flush_turns: 0 must be >= 1"),
        ("replay.flush_seconds=0", "replay.flush_seconds: 0.0 must be > 0"),
        ("replay.offline_fraction=1.5", "replay.offline_fraction: 1.5 must be in [0, 1]"),
        ("replay.offline_fraction=-0.1", "replay.offline_fraction: -0.1 must be in [0, 1]"),
        ("replay.offline_fraction_final=1.5", "replay.offline_fraction_final: 1.5 must be <= 1"),
        ("replay.image_cache_mb=-1", "replay.image_cache_mb: -1 must be >= 0"),
        ("replay.max_restarts=-2", "replay.max_restarts: -2 must be >= -1"),
        ("replay.num_cpus=-1", "replay.num_cpus: -1.0 must be >= 0"),
        ("learner.lr=0", "learner.lr: 0.0 must be > 0"),
        ("learner.lr=.nan", "learner.lr: nan must be > 0"),
        ("learner.critic_lr=-1e-3", "learner.critic_lr: -0.001 must be > 0"),
        ("learner.weight_decay=-1", "learner.weight_decay: -1.0 must be >= 0"),
        ("learner.batch_size=0", "learner.batch_size: 0 must be >= 1"),
        ("learner.num_workers=0", "learner.num_workers: 0 must be >= 1"),
        ("learner.grad_clip=0", "learner.grad_clip: 0.0 must be > 0"),
        ("learner.warmup_steps=-1", "learner.warmup_steps: -1 must be >= 0"),
        ("learner.lr_decay_steps=-1", "learner.lr_decay_steps: -1 must be >= 0"),
        ("learner.lr_final_ratio=2", "learner.lr_final_ratio: 2.0 must be in [0, 1]"),
        ("learner.gamma=1", "learner.gamma: 1.0 must be in [0, 1)"),
        ("learner.gamma=-0.1", "learner.gamma: -0.1 must be in [0, 1)"),
        ("learner.td_lambda=1.5", "learner.td_lambda: 1.5 must be in [0, 1]"),
        ("learner.expectile=0", "learner.expectile: 0.0 must be in (0, 1)"),
        ("learner.expectile=1", "learner.expectile: 1.0 must be in (0, 1)"),
        ("learner.tau=1.5", "learner.tau: 1.5 must be in [0, 1]"),
        ("learner.critic_coef=-1", "learner.critic_coef: -1.0 must be >= 0"),
        ("learner.reward_scale=0", "learner.reward_scale: 0.0 must be > 0"),
        ("learner.reward_range=[1,-1]", "learner.reward_range: [1.0, -1.0] must be [min, max] with min <"),
        ("learner.sft_warmup_steps=-1", "learner.sft_warmup_steps: -1 must be >= 0"),
        ("learner.beta=-1", "learner.beta: -1.0 must be >= 0"),
        ("learner.w_max=0", "learner.w_max: 0.0 must be > 0"),
        ("learner.offline_steps=-1", "learner.offline_steps: -1 must be >= 0"),
        ("learner.online_steps=-1", "learner.online_steps: -1 must be >= 0"),
        ("learner.checkpoint_every=0", "learner.checkpoint_every: 0 must be >= 1"),
        ("learner.publish_every=0", "learner.publish_every: 0 must be >= 1"),
        ("learner.max_updates_per_turn=0", "learner.max_updates_per_turn: 0.0 must be > 0"),
        (
            "learner.max_turns_per_update=1",
            "learner.max_turns_per_update: 1.0 must be 0 or >= 1 / "
            "learner.max_updates_per_turn (2): runners and learner would each wait for the other",
        ),
        (
            "learner.num_workers=4 learner.batch_size=2",
            "learner.batch_size: 2 must be >= learner.num_workers",
        ),
        ("sampler.num_samplers=0", "sampler.num_samplers: 0 must be >= 1"),
        ("sampler.temperature=-1", "sampler.temperature: -1.0 must be >= 0"),
        ("sampler.max_tokens=0", "sampler.max_tokens: 0 must be >= 1"),
        ("sampler.resident_versions=0", "sampler.resident_versions: 0 must be >= 1"),
        ("sampler.probe_tolerance=-1", "sampler.probe_tolerance: -1.0 must be >= 0"),
        ("sampler.gpu_memory_utilization=0", "sampler.gpu_memory_utilization: 0.0 must be in (0, 1]"),
        ("sampler.gpu_memory_utilization=1.5", "sampler.gpu_memory_utilization: 1.5 must be in (0, 1]"),
        ("sampler.timeout_s=0", "sampler.timeout_s: 0.0 must be > 0"),
        ("sampler.retries=-1", "sampler.retries: -1 must be >= 0"),
        ("sampler.batch_wait_s=-1", "sampler.batch_wait_s: -1.0 must be >= 0"),
        ("sampler.max_batch=0", "sampler.max_batch: 0 must be >= 1"),
        ("sampler.policy=greedy", "sampler.policy 'greedy': kind must be one of ['random', 'expert'"),
        ("runner.num_runners=0", "runner.num_runners: 0 must be >= 1"),
        ("runner.envs_per_runner=0", "runner.envs_per_runner: 0 must be >= 1"),
        ("runner.epsilon=1.5", "runner.epsilon: 1.5 must be in [0, 1]"),
        ("runner.send_every=0", "runner.send_every: 0 must be >= 1"),
        ("runner.pipeline_groups=0", "runner.pipeline_groups: 0 must be >= 1"),
        ("data.episodes=0", "data.episodes: 0 must be >= 1"),
        ("data.policy=epsilon:2", "data.policy 'epsilon:2': p=2.0 is outside [0, 1]"),
        ("data.policy=epsilon", "data.policy 'epsilon': expected epsilon:<p>[:<m>], numbers in [0, 1]"),
        ("data.policy=epsilon:0.1:2", "data.policy 'epsilon:0.1:2': m=2.0 is outside [0, 1]"),
        (
            "data.policy=malformed:0.1:0.2",
            "data.policy 'malformed:0.1:0.2': expected malformed:<p>, numbers in [0, 1]",
        ),
        ("data.policy=random:1", "data.policy 'random:1': random takes no argument"),
        ("data.policy=habit:0.5", "data.policy 'habit:0.5': expected habit:<f>:<p>[:<m>], numbers in [0, 1]"),
        ("data.policy=habit:1.5:0.5", "data.policy 'habit:1.5:0.5': f=1.5 is outside [0, 1]"),
        ("eval.episodes=0", "eval.episodes: 0 must be >= 1"),
        ("eval.seed=0", "eval.seed: 0 must be >= 1"),
        ("eval.every=-1", "eval.every: -1 must be >= 0"),
        ("sampler.backend=vllm model.lora_r=24", "model.lora_r: 24 must be <= 16 or one of [32, 64, 128"),
    ],
)
def test_each_value_rule_names_the_field_the_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override.split())
    assert str(err.value).startswith(message)


def test_the_edges_of_each_range_that_are_allowed_load():
    edges = [
        "learner.gamma=0", "learner.td_lambda=0", "learner.tau=1", "learner.lr_final_ratio=0",
        "learner.critic_coef=0", "learner.beta=0", "learner.offline_steps=0", "learner.online_steps=0",
        "replay.offline_fraction=1", "replay.offline_fraction_final=-1", "replay.max_restarts=-1",
        "replay.num_cpus=0", "model.lora_dropout=0", "sampler.temperature=0", "sampler.retries=0",
        "sampler.gpu_memory_utilization=1", "runner.epsilon=1", "eval.every=0", "data.policy=malformed:0.5",
        "learner.num_workers=2", "learner.batch_size=2",
    ]  # fmt: skip
    cfg = load_config(None, edges)
    assert (cfg.learner.gamma, cfg.replay.offline_fraction_final, cfg.learner.batch_size) == (0.0, -1.0, 2)
    for env_id in ("babyai:GoToLocal", "miniwob:click-test"):  # whether the level exists is make_env's call
        assert load_config(None, [f"env.id={env_id}"]).env.id == env_id
    assert load_config(None, ["sampler.backend=vllm", "model.lora_r=32"]).model.lora_r == 32
    assert load_config(None, ["sampler.backend=hf", "model.lora_r=24"]).model.lora_r == 24  # only vLLM cares


def test_config_ids_and_policies_are_the_envs_own():
    """The config checks ids and policy specs without importing envs (vlmq.config is the floor)."""
    import envs
    from envs.policies import Policy, make_policy
    from vlmq.config import CARD_ENV_IDS

    assert set(CARD_ENV_IDS) == set(envs.CARD_ENVS)
    for env_id in CARD_ENV_IDS:
        load_config(None, [f"env.id={env_id}"])
    assert make_policy("epsilon:0.25") == Policy("epsilon", 0.25)
    assert make_policy("epsilon:0.25:0.1") == Policy("epsilon", 0.25, 0.1)
    assert make_policy("habit:0.4:0.7") == Policy("habit", 0.7, 0.0, 0.4)
    assert make_policy("habit:0.4:0.7:0.1") == Policy("habit", 0.7, 0.1, 0.4)
    with pytest.raises(ValueError, match="policy 'greedy': kind must be one of"):
        make_policy("greedy")


def test_constructors_given_a_hand_made_config_apply_the_same_rules(tmp_path):
    """Tests and the Ray actors build these from dataclasses that never went through load_config."""
    from actors.env_runner import Runner
    from actors.sampler import VersionedSampler
    from learner.model import DualHeadModel
    from learner.trainer import Learner, LearnerGroup
    from replay.shard import Shard
    from vlmq.config import LearnerConfig, ModelConfig, ReplayConfig, RunConfig, SamplerConfig

    bad_runner, model = RunConfig(), ModelConfig(path="unused")
    bad_runner.runner.envs_per_runner = 0
    cases = [
        (lambda: Runner(bad_runner, [object()]), "runner.envs_per_runner: 0 must be >= 1"),
        (lambda: VersionedSampler(None, SamplerConfig(resident_versions=0)), "sampler.resident_versions: 0"),
        (lambda: Shard(str(tmp_path), ReplayConfig(flush_seconds=0.0)), "replay.flush_seconds: 0.0"),
        (lambda: DualHeadModel(ModelConfig(path="unused", num_critics=0)), "model.num_critics: 0"),
        (lambda: Learner(model, LearnerConfig(gamma=1.0)), "learner.gamma: 1.0"),
        (lambda: LearnerGroup(model, LearnerConfig(num_workers=0)), "learner.num_workers: 0"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            make()
    assert not list(tmp_path.iterdir())  # the shard refused before creating its folder


def test_a_bad_config_fails_before_ray_starts(monkeypatch, tmp_path, capsys):
    """From Python (`train` with a hand-made RunConfig) and from the CLI alike."""
    import ray

    import vlmq.driver
    from vlmq.cli import main
    from vlmq.config import RunConfig

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = RunConfig(out_dir=str(tmp_path / "runs"))
    cfg.runner.envs_per_runner = 0
    with pytest.raises(ConfigError, match="runner.envs_per_runner: 0 must be >= 1"):
        vlmq.driver.train(cfg)
    assert not (tmp_path / "runs").exists()  # nor any folder written

    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", smoke, f"out_dir={tmp_path / 'runs'}", "runner.envs_per_runner=0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "vlmq: config error: runner.envs_per_runner: 0 must be >= 1\n"
    assert not (tmp_path / "runs").exists()


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["learner.lr=0.002", "env.kwargs={a: 1}"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_shipped_configs_set_what_they_say():
    """Every config the project ships loads, and each value it sets is the value the run gets."""
    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {p.name for p in paths} >= {"numberline.yaml", "smoke.yaml"}

    def leaves(data: dict, prefix: tuple = ()):
        for k, v in data.items():
            yield from leaves(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]

    def settings(p: Path) -> dict:  # the file's leaves over its base's
        data = yaml.safe_load(p.read_text())
        base = data.pop("base", None)
        return {**(settings(p.parent / base) if base else {}), **dict(leaves(data))}

    for p in paths:
        resolved = dataclasses.asdict(load_config(p))
        for key, value in settings(p).items():
            got = functools.reduce(lambda d, k: d[k], key, resolved)
            assert got == value, (p.name, key)


def test_a_config_builds_on_its_base(tmp_path):
    """base first, then the file, then the overrides; a section merges key by key."""
    (tmp_path / "recipe.yaml").write_text("learner:\n  lr: 0.1\n  tau: 0.2\nenv:\n  obs_mode: text\n")
    (tmp_path / "mid.yaml").write_text("base: recipe.yaml\nlearner:\n  tau: 0.3\n")
    sub = tmp_path / "envs"
    sub.mkdir()
    (sub / "bj.yaml").write_text("base: ../mid.yaml\nenv:\n  id: blackjack\n")
    cfg = load_config(sub / "bj.yaml", ["learner.lr=0.5"])
    assert (cfg.learner.lr, cfg.learner.tau, cfg.env.obs_mode, cfg.env.id) == (0.5, 0.3, "text", "blackjack")
    assert cfg.learner.gamma == 0.9  # a default neither file sets


def test_a_missing_or_circular_base_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"base 'nowhere.yaml' is not a config file"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match=r"base 'b.yaml' is already in this chain of bases"):
        load_config(tmp_path / "b.yaml")
