"""The `vlmq` command: `python -m vlmq`, `vlmq config`, `--log-level`, and `vlmq eval` on the
checkpoints of a short smoke run."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from vlmq.cli import main
from vlmq.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def test_python_m_vlmq_prints_the_resolved_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "vlmq", "config", "--config", SMOKE, "learner.lr=1e-3", "eval.episodes=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (tmp_path / "resolved.yaml").write_text(out.stdout)
    resolved = load_config(tmp_path / "resolved.yaml")
    assert resolved == load_config(SMOKE, ["learner.lr=1e-3", "eval.episodes=3"])
    assert (resolved.name, resolved.learner.lr, resolved.eval.episodes) == ("smoke", 1e-3, 3)


def test_train_and_config_refuse_a_bad_override_alike(capsys):
    errors = []
    for command in ("train", "config"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--config", SMOKE, "learner.nope=1"])
        assert exit_.value.code == 2
        out = capsys.readouterr()
        assert out.out == ""
        errors.append(out.err)
    assert errors[0] == errors[1]
    assert errors[0].startswith("vlmq: config error: unknown config key 'learner.nope'; valid keys here: lr,")


@pytest.fixture(autouse=True)
def _root_log_level(monkeypatch):
    """main() sets the root logger's level: put it back after each test."""
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)


def test_log_level_sets_which_diagnostics_show(monkeypatch, caplog, tmp_path):
    import vlmq.tiny_model

    monkeypatch.setattr(vlmq.tiny_model, "build_tiny_model", lambda out, arch, seed: Path(out))
    main(["--log-level", "warning", "model", "tiny", "--out", str(tmp_path / "a")])
    assert logging.getLogger().level == logging.WARNING and "model written" not in caplog.text
    main(["--log-level", "info", "model", "tiny", "--arch", "text", "--out", str(tmp_path / "b")])
    assert f"tiny text model written to {tmp_path / 'b'}" in caplog.text
    with pytest.raises(SystemExit):
        main(["--log-level", "loud", "config"])


@pytest.fixture(scope="module")
def smoke_run(ray_local, tiny_vlm_dir, tmp_path_factory) -> Path:
    """configs/smoke.yaml cut to 2 offline updates and 1 online one, in this process: checkpoints at
    update 2 (serving version 1) and 3 (version 2). One pipeline group, so an evaluation's sampler
    calls, and so its numbers, do not depend on timing."""
    from vlmq.driver import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        SMOKE,
        [f"out_dir={out}", f"model.path={tiny_vlm_dir}", "learner.offline_steps=2", "learner.online_steps=1",
         "learner.checkpoint_every=2", "data.episodes=16", "eval.episodes=2", "runner.pipeline_groups=1"],
    )  # fmt: skip
    train(cfg)
    return out / "smoke"


def _eval(capsys, *args: str) -> dict[str, str]:
    """`vlmq eval` and its table as {metric: value}."""
    main(["eval", *args])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "value"]
    return dict(line.split(maxsplit=1) for line in lines[2:])


@pytest.mark.slow
def test_eval_of_a_run_plays_its_final_evaluation_again(smoke_run, capsys):
    final = json.loads((smoke_run / "history.json").read_text())["eval"][-1]
    got = _eval(capsys, "--run", str(smoke_run))
    assert (got["policy"], got["env"], got["episodes"]) == (
        str(smoke_run / "adapters" / "v2"),
        "numberline",
        "2",
    )
    for ours, theirs in [("success_rate", "success"), ("mean_return", "return"), ("syntax_accuracy",) * 2]:
        assert float(got[ours]) == pytest.approx(final[theirs], abs=5e-4), ours  # the table has 3 decimals
    # the same seeds through the same path, played by the env's expert: every episode solved
    expert = _eval(capsys, "--run", str(smoke_run), "sampler.backend=scripted", "sampler.policy=expert")
    assert (expert["policy"], expert["success_rate"], expert["syntax_accuracy"]) == (
        "scripted expert",
        "1.000",
        "1.000",
    )


@pytest.mark.slow
def test_eval_of_an_adapter_on_another_env(smoke_run, capsys):
    adapter = str(smoke_run / "adapters" / "v1")
    got = _eval(
        capsys, "--run", str(smoke_run), "--adapter", adapter, "--env", "blackjack", "--episodes", "3"
    )
    assert (got["policy"], got["env"], got["episodes"]) == (adapter, "blackjack", "3")


@pytest.mark.slow
def test_a_checkpoints_policy_is_the_version_its_samplers_served(smoke_run, tmp_path):
    from vlmq.evaluate import checkpoint_adapter

    assert checkpoint_adapter(smoke_run) == smoke_run / "adapters" / "v2"  # the newest: update 3
    assert checkpoint_adapter(smoke_run, 2) == smoke_run / "adapters" / "v1"
    with pytest.raises(FileNotFoundError, match=r"checkpoints there: \['step_0000002', 'step_0000003'\]"):
        main(["eval", "--run", str(smoke_run), "--checkpoint", "7"])
    base = tmp_path / "checkpoints" / "step_0000001"
    base.mkdir(parents=True)
    (base / "driver.json").write_text(json.dumps({"version": 0}))
    assert checkpoint_adapter(tmp_path, 1) is None  # version 0: the base model, no adapter
