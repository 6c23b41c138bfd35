"""`vlmq data collect | info | export` on the real numberline env, and the files' readability."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from replay.datasets import export, info
from replay.shard import Shard
from replay.store import read_folder
from vlmq.cli import main
from vlmq.config import ConfigError, ReplayConfig, load_config
from vlmq.driver import check_dataset


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "numberline")
    main(
        ["data", "collect", "--env", "numberline", "--policy", "malformed:0.3", "--episodes", "40"]
        + ["--out", out, "--workers", "2", "--seed", "5"]
    )
    return out


@pytest.mark.slow
def test_collect_and_info(dataset, capsys):
    main(["data", "info", dataset])
    stats = json.loads(capsys.readouterr().out)
    table, bad = read_folder(dataset)
    assert not bad and stats["bad_segments"] == []
    assert stats["turns"] == table.num_rows and stats["episodes"] == stats["complete_episodes"] == 40
    assert stats["env_ids"] == ["numberline"] and stats["policy"] == "malformed:0.3"
    assert stats["policy_versions"] == {"-1": table.num_rows}
    rows = table.to_pylist()
    syntax_errors = sum(not r["syntax_ok"] for r in rows)
    assert syntax_errors > 0 and stats["syntax_error_rate"] == pytest.approx(syntax_errors / len(rows))
    ends = [r for r in rows if r["terminated"] or r["truncated"]]
    assert len(ends) == 40
    assert stats["success_rate"] == pytest.approx(np.mean([r["success"] for r in ends]))
    returns = {}
    for r in rows:
        returns[r["episode_id"]] = returns.get(r["episode_id"], 0.0) + r["reward"]
    assert stats["mean_return"] == pytest.approx(np.mean(list(returns.values())))
    meta = json.load(open(f"{dataset}/meta.json"))
    assert meta["seed"] == 5 and sum(meta["segments"].values()) == table.num_rows
    # each episode: turns 0..n-1 in order; every turn but the last bootstraps from the next prompt
    by_ep: dict[str, list[dict]] = {}
    for r in rows:
        by_ep.setdefault(r["episode_id"], []).append(r)
    for ep in by_ep.values():
        assert [r["turn_index"] for r in ep] == list(range(len(ep)))
        assert all(a["next_messages"] == b["messages"] for a, b in zip(ep, ep[1:]))
        assert all(a["next_image_hashes"] == b["image_hashes"] for a, b in zip(ep, ep[1:]))
        assert ep[-1]["terminated"] or ep[-1]["truncated"]
        assert ep[-1]["next_messages"] is None or ep[-1]["truncated"]
        assert all(r["seed"] == ep[0]["seed"] for r in ep)
    # images are stored once: far fewer files than references
    refs = sum(len(r["image_hashes"]) for r in rows)
    assert refs == table.num_rows and 0 < stats["images"] < refs


@pytest.mark.slow
def test_files_load_with_pyarrow_datasets_and_as_offline_replay(dataset, tmp_path):
    import datasets

    n = info(dataset)["turns"]
    assert pq.read_table(f"{dataset}/seg-000000.parquet").num_rows > 0
    hf = datasets.load_dataset(
        "parquet", data_files=f"{dataset}/seg-*.parquet", split="train", cache_dir=str(tmp_path / "hf")
    )
    assert hf.num_rows == n and json.loads(hf[0]["messages"])[0]["role"] == "user"
    shard = Shard(f"memory://{tmp_path.name}", ReplayConfig())
    assert shard.load_offline(dataset) == n
    for t in shard.sample(64, 1.0, seed=0):
        assert len(t.images) == 1 and t.images[0].dtype == np.uint8 and t.images[0].shape[2] == 3
        assert t.policy_version == -1 and t.gen_ids is None and t.logprobs is None
        assert t.terminated or len(t.next_images) == 1
    shard.close()


@pytest.mark.slow
def test_export_jsonl_and_parquet(dataset, tmp_path, capsys):
    table, _ = read_folder(dataset)
    main(["data", "export", dataset, "--out", str(tmp_path / "all.jsonl"), "--format", "jsonl"])
    assert f"wrote {table.num_rows} turns" in capsys.readouterr().out
    lines = [json.loads(line) for line in open(tmp_path / "all.jsonl")]
    assert len(lines) == table.num_rows
    assert lines[0]["messages"] == json.loads(table.column("messages")[0].as_py())
    assert lines[0]["episode_id"] == table.column("episode_id")[0].as_py()
    export(dataset, str(tmp_path / "all.parquet"), fmt="parquet")
    assert pq.read_table(tmp_path / "all.parquet").equals(table)
    with pytest.raises(ValueError, match="jsonl or parquet"):
        export(dataset, str(tmp_path / "x.csv"), fmt="csv")
    with pytest.raises(SystemExit) as exit_:  # the CLI answers a used folder with one line, status 2
        main(["data", "collect", "--env", "numberline", "--episodes", "1", "--out", dataset])
    assert exit_.value.code == 2 and "already holds a dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_collect_plays_the_runs_env_config(ray_local, tmp_path):
    """Collection goes through the env runner, so env.history, syntax_penalty and max_steps reach the
    data; the same seed and workers give the same dataset."""
    args = ["data", "collect", "--env", "numberline", "--policy", "malformed:0.5", "--episodes", "12"]
    args += ["--workers", "2", "env.history=2", "env.syntax_penalty=-0.5", "env.max_steps=3"]
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b")])
    table, _ = read_folder(str(tmp_path / "a"))
    again, _ = read_folder(str(tmp_path / "b"))
    assert table.drop(["wall_time"]).equals(again.drop(["wall_time"]))
    rows = table.to_pylist()
    assert max(r["turn_index"] for r in rows) == 2  # max_steps 3
    assert all(r["truncated"] for r in rows if r["turn_index"] == 2 and not r["terminated"])
    bad = [r for r in rows if not r["syntax_ok"]]
    assert bad and all(r["reward"] == -0.5 for r in bad)
    by_ep: dict[str, list[dict]] = {}
    for r in rows:
        by_ep.setdefault(r["episode_id"], []).append(r)
    for ep in by_ep.values():
        for r in ep:
            text = json.loads(r["messages"])[0]["content"][-1]["text"]
            shown = [
                f"Answer: {e['action_text']}" in text
                for e in ep[max(0, r["turn_index"] - 2) : r["turn_index"]]
            ]
            assert all(shown) and ("Earlier turns:" in text) == (r["turn_index"] > 0)
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    assert (meta["history"], meta["syntax_penalty"], meta["max_steps"]) == (2, -0.5, 3)


@pytest.mark.parametrize(
    "override, field",
    [
        ("env.id=blackjack", "env.id"),
        ("env.obs_mode=text", "env.obs_mode"),
        ("env.history=2", "env.history"),
        ("env.syntax_penalty=-0.5", "env.syntax_penalty"),
        ("env.max_steps=3", "env.max_steps"),
        ("env.demo=2", "env.demo"),
        ("env.kwargs={max_position: 7}", "env.kwargs"),
    ],
)
def test_training_on_a_dataset_of_another_env_config_is_refused_naming_the_field(
    dataset, override, field, tmp_path, capsys
):
    smoke = str(Path(__file__).parents[1] / "configs" / "smoke.yaml")
    argv = ["train", "--config", smoke, f"data.path={dataset}", f"out_dir={tmp_path}"]
    check_dataset(load_config(smoke, [f"data.path={dataset}"]))  # the dataset's own env config passes
    with pytest.raises(SystemExit) as exit_:
        main([*argv, override])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"collected with {field}=" in err and f"this run has {field}=" in err, (
        err
    )
    assert not any(tmp_path.iterdir())  # refused before the run folder exists
    assert info(dataset)["turns"] > 0  # the dataset is untouched


def test_a_dataset_older_than_the_demo_key_counts_as_collected_without_one(dataset, tmp_path):
    """Datasets collected before `demo` was recorded had no worked turn in their prompts."""
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["demo"]
    (old / "meta.json").write_text(json.dumps(meta))
    smoke = str(Path(__file__).parents[1] / "configs" / "smoke.yaml")
    check_dataset(load_config(smoke, [f"data.path={old}"]))
    with pytest.raises(ConfigError, match=r"collected with env\.demo=0"):
        check_dataset(load_config(smoke, [f"data.path={old}", "env.demo=2"]))


@pytest.mark.slow
def test_collect_with_the_model_keeps_the_samplers_ids_and_logprobs(ray_local, tiny_vlm_dir, tmp_path):
    """`--policy model`: the base model plays through a Sampler actor, and its turns are trainable
    token-in, token-out: the learner's batch re-encodes each stored prompt to the sampler's prompt ids
    (build_batch raises otherwise) and its action tokens are the generated ids."""
    from tests.test_sampler import assert_trains_token_for_token

    out = tmp_path / "model-data"
    main(
        ["data", "collect", "--env", "numberline", "--policy", "model", "--model", str(tiny_vlm_dir)]
        + ["--backend", "hf", "--temperature", "1.0", "--episodes", "4", "--out", str(out), "env.max_steps=3"]
    )
    meta = json.load(open(out / "meta.json"))
    assert (meta["policy"], meta["policy_version"], meta["model"]) == ("model", 0, str(tiny_vlm_dir))
    assert (meta["backend"], meta["temperature"]) == ("hf", 1.0)
    shard = Shard(f"memory://{tmp_path.name}", ReplayConfig())
    n = shard.load_offline(str(out))
    assert n == info(str(out))["turns"] and info(str(out))["episodes"] == 4
    turns = shard.sample(n, 1.0, seed=0)
    shard.close()
    for t in turns:
        assert t.policy_version == 0 and t.prompt_ids and t.gen_ids
        assert len(t.logprobs) == len(t.gen_ids) and all(lp <= 0 for lp in t.logprobs)
    assert_trains_token_for_token(turns, tiny_vlm_dir)


def test_collect_with_the_model_needs_a_model_backend(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "collect", "--env", "numberline", "--policy", "model", "--out", str(tmp_path / "d")]
             + ["sampler.backend=scripted"])  # fmt: skip
    assert exit_.value.code == 2 and "data.policy model" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
