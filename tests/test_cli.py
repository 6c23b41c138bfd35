"""The `vlmq` command: `python -m vlmq`, `vlmq config`, `--log-level`, one-line errors for bad paths,
the Makefile's targets, and `vlmq eval` and `vlmq plot` on a short smoke run."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
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


@pytest.fixture
def paths(tmp_path) -> dict[str, Path]:
    """What the bad-path commands are given: a missing path, a file, a folder, a run folder with its
    config, one that already holds a checkpoint (out_dir `runs`, name smoke), and a folder with a segment."""
    from vlmq.config import save_config

    p = {k: tmp_path / k for k in ("missing", "file", "folder", "run", "runs", "dataset")}
    p["file"].write_text("")
    p["folder"].mkdir()
    save_config(load_config(SMOKE), p["run"] / "config.yaml")
    (p["runs"] / "smoke" / "checkpoints").mkdir(parents=True)
    (p["runs"] / "smoke" / "checkpoints" / "latest").write_text("step_0000004")
    p["dataset"].mkdir()
    (p["dataset"] / "seg-000000.parquet").write_text("")
    return p


# each command given a bad path, and the path its error must name ({missing} etc.: the `paths` above)
BAD_PATHS = {
    "train config": (["train", "--config", "{missing}"], "{missing}"),
    "config config": (["config", "--config", "{missing}"], "{missing}"),
    "train model": (
        ["train", "--config", SMOKE, "model.path={missing}", "model.build_tiny=false"],
        "{missing}",
    ),
    "train dataset": (["train", "--config", SMOKE, "data.path={folder}"], "{folder}"),
    "train resume": (
        ["train", "--config", SMOKE, "--resume", "out_dir={folder}"],
        "{folder}/smoke/checkpoints",
    ),
    "train existing run": (["train", "--config", SMOKE, "out_dir={runs}"], "{runs}/smoke"),
    "eval run": (["eval", "--run", "{missing}"], "{missing}"),
    "eval checkpoint": (["eval", "--run", "{run}", "--checkpoint", "7"], "{run}/checkpoints/step_0000007"),
    "eval adapter": (["eval", "--run", "{run}", "--adapter", "{folder}"], "{folder}"),
    "plot run": (["plot", "--run", "{run}"], "{run}"),
    "model tiny out": (["model", "tiny", "--out", "{file}"], "{file}"),
    "collect config": (["data", "collect", "--config", "{missing}", "--out", "{folder}"], "{missing}"),
    "collect out": (["data", "collect", "--config", SMOKE, "--out", "{dataset}"], "{dataset}"),
    "info dataset": (["data", "info", "{missing}"], "{missing}"),
    "export dataset": (["data", "export", "{missing}", "--out", "{file}"], "{missing}"),
    "export out": (["data", "export", "{dataset}", "--out", "{folder}"], "{folder}"),
}


@pytest.mark.parametrize("case", BAD_PATHS)
def test_a_bad_path_is_one_line_naming_it_and_exit_status_2(case, paths, capsys):
    argv, named = BAD_PATHS[case]
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(**paths) for arg in argv])
    out, named = capsys.readouterr(), named.format(**paths)
    assert exit_.value.code == 2 and out.out == ""
    assert out.err.startswith("vlmq: ") and out.err.count("\n") == 1 and out.err.endswith("\n"), out.err
    assert f"{named} " in out.err or f"{named};" in out.err, out.err


def _make(*args: str) -> str:
    """`make` as a user runs it, also when the suite itself runs under `make test` (CI): without the
    parent's MAKEFLAGS/MAKELEVEL, and without "Entering directory" lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    cmd = ["make", "--no-print-directory", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def test_make_help_lists_every_target_and_only_bench_run_writes_outside_runs():
    phony = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    listed = [line.split()[0] for line in _make("help").splitlines()]
    assert listed == phony.split()[1:]
    run, bench_run = _make("-n", "run", "RUN_NAME=x"), _make("-n", "bench-run", "RUN_NAME=x")
    assert "benchmarks/" not in run
    assert (
        bench_run.startswith(run)
        and "cp runs/x/results.json benchmarks/results/run_numberline.json" in bench_run
    )


def _tracked_changes() -> str:
    """The checkout's changes to tracked files, as `git status` shows them."""
    cmd = ["git", "status", "--porcelain", "--untracked-files=no"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def tracked_before_smoke() -> str | None:
    """The tracked changes just before the smoke run (None outside a git checkout)."""
    return _tracked_changes() if shutil.which("git") and (REPO / ".git").exists() else None


@pytest.fixture(scope="module")
def smoke_run(ray_local, tiny_vlm_dir, tmp_path_factory, tracked_before_smoke) -> Path:
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


@pytest.mark.slow
def test_a_run_leaves_the_checkout_as_it_found_it(smoke_run, tracked_before_smoke):
    """Compared with the tracked changes just before the run rather than required to be none: someone
    may be editing the checkout while the tests run. The first test of the smoke run, so that window is
    the run itself."""
    if tracked_before_smoke is None:
        pytest.skip("not a git checkout")
    assert _tracked_changes() == tracked_before_smoke


@pytest.mark.slow
def test_the_history_marks_the_pushes_and_the_online_phase(smoke_run, tmp_path, capsys):
    history = json.loads((smoke_run / "history.json").read_text())
    assert [(p["name"], p["x"], p["env_steps"]) for p in history["phases"]] == [
        ("offline", 0, 0),
        ("online", 2, 0),
    ]
    pushes = [(p["version"], p["x"], p["env_steps"] > 0) for p in history["pushes"]]
    assert pushes == [(1, 2, False), (2, 3, True)]  # v1 after the offline phase, v2 after update 3 (online)
    main(["plot", "--run", str(smoke_run), "--out", str(tmp_path), "--prefix", "again_"])
    drawn = [tmp_path / "again_collection.png", tmp_path / "again_learning.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in drawn]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)


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
def test_a_run_without_online_updates_reuses_its_offline_evaluation_as_final(
    ray_local, tiny_vlm_dir, tmp_path, caplog
):
    """sft_plain as the suite runs it (online_steps 0, eval.before false): the policy after the offline
    phase is the final one, so its greedy evaluation is played once, and the untrained one not at all."""
    from vlmq.driver import train

    cfg = load_config(
        SMOKE,
        [f"out_dir={tmp_path}", f"model.path={tiny_vlm_dir}", "learner.offline_steps=2", "learner.online_steps=0",
         "data.episodes=8", "eval.episodes=2", "eval.before=false", "sampler.backend=scripted"],
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="vlmq.driver"):
        results = train(cfg)
    assert set(results["phase_s"]) == {"start", "offline", "eval_offline"}
    evals = [r.getMessage().split("]")[0] for r in caplog.records if r.getMessage().startswith("[eval")]
    assert evals == ["[eval offline"]
    assert math.isnan(results["success_before"])  # not evaluated
    assert (results["success_final"], results["syntax_final"]) == (
        results["success_offline"],
        results["syntax_offline"],
    )
    assert results["updates"] == 2


@pytest.mark.slow
def test_eval_of_an_adapter_on_another_env(smoke_run, capsys):
    adapter = str(smoke_run / "adapters" / "v1")
    got = _eval(
        capsys, "--run", str(smoke_run), "--adapter", adapter, "--env", "blackjack", "--episodes", "3"
    )
    assert (got["policy"], got["env"], got["episodes"]) == (adapter, "blackjack", "3")


@pytest.mark.slow
def test_a_checkpoints_policy_is_the_version_its_samplers_served(smoke_run, tmp_path, capsys):
    from vlmq.config import RunConfig, load_config
    from vlmq.evaluate import checkpoint_adapter

    cfg = load_config(smoke_run / "config.yaml")
    assert checkpoint_adapter(cfg) == smoke_run / "adapters" / "v2"  # the newest: update 3
    assert checkpoint_adapter(cfg, 2) == smoke_run / "adapters" / "v1"
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(smoke_run), "--checkpoint", "7"])
    assert "checkpoints there: ['step_0000002', 'step_0000003']" in capsys.readouterr().err
    base = tmp_path / "checkpoints" / "step_0000001"
    base.mkdir(parents=True)
    (base / "driver.json").write_text(json.dumps({"version": 0}))
    assert (
        checkpoint_adapter(RunConfig(out_dir=str(tmp_path.parent), name=tmp_path.name), 1) is None
    )  # v0: base


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "field"), [("model.lora_r=4", "model.lora_r"), ("env.id=blackjack", "env.id")]
)
def test_a_resume_that_does_not_match_its_checkpoint_is_refused_by_field(
    smoke_run, tiny_vlm_dir, override, field, capsys
):
    config = (smoke_run / "config.yaml").read_text()
    argv = ["train", "--config", SMOKE, f"out_dir={smoke_run.parent}", f"model.path={tiny_vlm_dir}", override]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--resume"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert f"{field} is " in err and "checkpoint step_0000003 was trained with" in err, err
    assert (smoke_run / "config.yaml").read_text() == config  # the run's record is untouched
