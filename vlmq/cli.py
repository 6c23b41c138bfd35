"""The `vlmq` command: train, build the tiny model, collect and inspect datasets.

Subcommands import their modules lazily so `vlmq --help` stays fast and a missing optional
dependency (vllm, a browser) only matters to the command that needs it.
"""

from __future__ import annotations

import argparse
import json
import sys


def _model_tiny(args: argparse.Namespace) -> None:
    from vlmq.tiny_model import build_tiny_model

    out = build_tiny_model(args.out, arch=args.arch, seed=args.seed)
    print(f"tiny {args.arch} model written to {out}")


def _data_collect(args: argparse.Namespace) -> None:
    from replay.datasets import collect

    summary = collect(
        env_id=args.env,
        policy=args.policy,
        episodes=args.episodes,
        out=args.out,
        workers=args.workers,
        obs_mode=args.obs_mode,
        seed=args.seed,
    )
    print(json.dumps(summary, indent=2))


def _data_info(args: argparse.Namespace) -> None:
    from replay.datasets import info

    print(json.dumps(info(args.path), indent=2))


def _data_export(args: argparse.Namespace) -> None:
    from replay.datasets import export

    print(export(args.path, args.out, fmt=args.format))


def _train(args: argparse.Namespace) -> None:
    from vlmq.config import load_config

    cfg = load_config(args.config, args.overrides)
    from vlmq.driver import train

    train(cfg, resume=args.resume)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmq", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="offline-to-online VLMQ training on Ray")
    t.add_argument("--config", help="YAML config file (configs/*.yaml)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=3e-4")
    t.set_defaults(func=_train)

    m = sub.add_parser("model", help="model utilities").add_subparsers(dest="model_cmd", required=True)
    tiny = m.add_parser("tiny", help="build the tiny random-initialised model offline")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--arch", default="idefics3", choices=["idefics3", "text"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_model_tiny)

    d = sub.add_parser("data", help="datasets of turns").add_subparsers(dest="data_cmd", required=True)
    c = d.add_parser("collect", help="collect a dataset with an env policy")
    c.add_argument("--env", required=True)
    c.add_argument("--policy", default="random", help="random | expert | epsilon:<p> | malformed:<p>")
    c.add_argument("--episodes", type=int, default=2000)
    c.add_argument("--out", required=True)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--obs-mode", default="both", choices=["image", "text", "both"])
    c.add_argument("--seed", type=int, default=0)
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

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"vlmq: config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
