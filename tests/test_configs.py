"""Every shipped config, run smoke-sized end to end through `vlmq train` on the tiny model: it collects
its own dataset with its own policy, trains a few offline and online updates and evaluates. The
engine is hf here (vLLM's cold start is ~40 s per run; tests/test_vllm.py covers that engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlmq.cli import main
from vlmq.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_env_of_the_suite_has_a_config():
    ids = {load_config(p).env.id.split(":")[0] for p in CONFIGS}
    assert ids >= {"numberline", "blackjack", "ezpoints", "points24", "babyai", "miniwob"}


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_smoke_sized(path, ray_local, tiny_vlm_dir, tiny_text_dir, tmp_path):
    """A pretrained model's config (text_only) runs on the tiny text model: its own model is tested in
    tests/test_smollm2.py; here the config's wiring is (its data policy, env, phases)."""
    cfg = load_config(path)
    model = tiny_text_dir if cfg.model.text_only else tiny_vlm_dir
    episodes = 2 if cfg.env.id.startswith("miniwob") else 8  # a browser page resets in ~1.7 s
    main(
        ["train", "--config", str(path), f"out_dir={tmp_path}", f"model.path={model}",
         f"data.episodes={episodes}", "learner.batch_size=4", "learner.offline_steps=2",
         "learner.online_steps=1", "learner.lr_decay_steps=0", "learner.sft_warmup_steps=1",
         "learner.checkpoint_every=2", "learner.publish_every=1", "learner.max_updates_per_turn=0.5",
         "sampler.backend=hf", "runner.envs_per_runner=2", "eval.episodes=2"]
    )  # fmt: skip
    run = tmp_path / cfg.name
    results = json.loads((run / "results.json").read_text())
    assert results["updates"] == 3 and results["lora_versions"] >= 2
    assert all(0 <= results[f"success_{k}"] <= 1 for k in ("before", "offline", "final"))
    meta = json.loads((run / "dataset" / "meta.json").read_text())
    assert (meta["env_id"], meta["policy"], meta["obs_mode"]) == (
        cfg.env.id,
        cfg.data.policy,
        cfg.env.obs_mode,
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["learner"]["gamma"] == cfg.learner.gamma
