import dataclasses
import functools
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
    with pytest.raises(ConfigError, match=r"learner.reward_range: expected \[min, max\]"):
        load_config(None, ["learner.reward_range=[-1, 0, 1]"])


def test_learner_refuses_values_outside_their_range():
    from learner.trainer import check_learner_config
    from vlmq.config import LearnerConfig

    for kw, name in [
        ({"gamma": 1.0}, "gamma"),
        ({"td_lambda": 1.5}, "td_lambda"),
        ({"expectile": 0.0}, "expectile"),
        ({"reward_range": [1.0, -1.0]}, "reward_range"),
        ({"lr_final_ratio": 2.0}, "lr_final_ratio"),
    ]:
        with pytest.raises(ValueError, match=f"learner.{name} must be"):
            check_learner_config(LearnerConfig(**kw))


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

    for p in paths:
        resolved = dataclasses.asdict(load_config(p))
        for key, value in leaves(yaml.safe_load(p.read_text())):
            got = functools.reduce(lambda d, k: d[k], key, resolved)
            assert got == value, (p.name, key)
