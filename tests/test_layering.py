"""The dependency direction between the top-level packages, read from every module's imports.

Lazy imports inside functions count: a call path that only runs on a cluster still drags its package
in. The contract is data (`ALLOWED`); a new module of `vlmq/` must be placed in it before it passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vlmq", "envs", "replay", "learner", "actors")
ROOF = ("vlmq.driver", "vlmq.cli", "vlmq.monitor", "vlmq.evaluate", "vlmq.__main__", "vlmq.__init__")
FLOOR = "vlmq.config"
METRICS = "vlmq.metrics"  # the one table of metrics: every recorder (runners, samplers, driver) imports it

# Which unit may import which (a unit is a package, or one module of vlmq/). Imports inside a unit are
# free. vlmq.tiny_model trains its tokenizer on the envs' corpus, and only the roof builds the model.
ALLOWED: dict[str, set[str]] = {
    FLOOR: set(),
    METRICS: set(),
    "envs": {FLOOR},
    "vlmq.tiny_model": {FLOOR, "envs"},
    "vlmq.smollm2": {"vlmq.tiny_model"},  # SmolVLM shares the tiny VLM's image tokens
    "vlmq.local_cluster": set(),  # `ray start` processes for tests and benchmarks: Ray only
    "vlmq.nodes": set(),  # which node sees which path: Ray and fsspec only
    "replay": {FLOOR, "vlmq.nodes"},  # storage only: turns, shards, datasets; never an env
    "vlmq.checkpoints": {"replay"},  # a run's checkpoints under one storage root (replay.store's URLs)
    "learner": {FLOOR, "replay"},
    "actors": {FLOOR, METRICS, "envs", "replay", "learner"},
    **{
        roof: {
            FLOOR,
            METRICS,
            "vlmq.tiny_model",
            "vlmq.smollm2",
            "vlmq.nodes",
            "vlmq.checkpoints",
            "envs",
            "replay",
            "learner",
            "actors",
            *ROOF,
        }
        for roof in ROOF
    },
}


def unit(module: str) -> str:
    """`envs.cards` -> `envs`; modules of vlmq/ are units of their own (`vlmq` itself: its __init__)."""
    parts = module.split(".")
    if parts[0] == "vlmq":
        return "vlmq." + (parts[1] if len(parts) > 1 else "__init__")
    return parts[0]


def imports(source: str, module: str) -> set[str]:
    """Every module of PACKAGES that `source` (the file of `module`, `pkg.__init__` for a package's
    own file) imports anywhere: top level, functions, branches."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the package this file is in
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            # `from vlmq import driver` imports the unit vlmq.driver; elsewhere the package is the unit
            names = [f"{base}.{a.name}" for a in node.names] if base == "vlmq" else [base]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def violations(modules: dict[str, str]) -> list[str]:
    """`importer -> imported` for each import the contract forbids, in {module: source}."""
    out = []
    for module, source in sorted(modules.items()):
        src = unit(module)
        if src not in ALLOWED:
            out.append(f"{module}: not placed in ALLOWED")
            continue
        for name in sorted(imports(source, module)):
            dst = unit(name)
            if dst != src and dst not in ALLOWED[src]:
                out.append(f"{module} -> {name}")
    return out


def repo_modules() -> dict[str, str]:
    """{dotted module name: source} of every file of PACKAGES."""
    return {
        ".".join(path.relative_to(REPO).with_suffix("").parts): path.read_text()
        for pkg in PACKAGES
        for path in sorted((REPO / pkg).rglob("*.py"))
    }


def test_the_packages_import_only_downward():
    modules = repo_modules()
    assert {"vlmq.config", "replay.shard", "actors.sampler", "vlmq.driver"} <= modules.keys()
    assert violations(modules) == []


def test_the_contract_has_no_cycle():
    """Each unit's allowances below the roof reach only units strictly below it."""
    order = [
        FLOOR,
        METRICS,
        "vlmq.nodes",
        "envs",
        "vlmq.tiny_model",
        "vlmq.smollm2",
        "replay",
        "vlmq.checkpoints",
        "learner",
        "actors",
    ]
    for i, u in enumerate(order):
        assert ALLOWED[u] <= set(order[:i]), u


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("replay.shard", "def f():\n    from envs import make_env\n", ["replay.shard -> envs"]),
        ("replay.shard", "import envs.cards as c\n", ["replay.shard -> envs.cards"]),
        (
            "replay.shard",
            "from vlmq.config import X\nfrom vlmq import tiny_model\n",
            ["replay.shard -> vlmq.tiny_model"],
        ),
        ("learner.batch", "from actors import sampler\n", ["learner.batch -> actors"]),
        ("envs.cards", "from vlmq import driver\n", ["envs.cards -> vlmq.driver"]),
        ("vlmq.config", "if x:\n    import vlmq.tiny_model\n", ["vlmq.config -> vlmq.tiny_model"]),
        ("envs.cards", "from .base import Env\nfrom . import policies\n", []),
        (
            "envs.__init__",
            "from . import cards\nfrom vlmq.driver import x\n",
            ["envs.__init__ -> vlmq.driver"],
        ),
        ("vlmq.tiny_model", "from envs import vocab_corpus\nimport numpy\n", []),
        ("actors.env_runner", "from learner.weight_sync import pack\nfrom replay.turn import Turn\n", []),
        ("vlmq.new_module", "", ["vlmq.new_module: not placed in ALLOWED"]),
    ],
)
def test_the_checker_names_each_wrong_arrow(module, source, expected):
    assert violations({module: source}) == expected


def test_relative_imports_resolve_against_the_package():
    assert imports("from .turn import Turn\nfrom ..envs import x\n", "replay.shard") == {
        "replay.turn",
        "envs",
    }
    assert imports("from .base import Env\nfrom . import cards\n", "envs.__init__") == {"envs.base", "envs"}
