"""One table of metrics: vlmq/metrics.py declares them, docs/metrics.md shows exactly those."""

from __future__ import annotations

import re
from pathlib import Path

from vlmq.metrics import DRIVER, RUNNER, SAMPLER, SPECS

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_the_docs_table_is_the_declared_table():
    rows = re.findall(
        r"^\| `ray_vlmq_(\w+?)(?:_total)?(?:\{[^}]*\})?` \| (\w+) \| (.+) \|$", DOC.read_text(), re.M
    )
    assert [(name, kind, doc) for name, kind, doc in rows] == [(n, s.kind, s.doc) for n, s in SPECS.items()]


def test_every_metric_belongs_to_one_recorder():
    assert {s.tags for s in SPECS.values()} == {RUNNER, SAMPLER, DRIVER}
    assert all(bool(s.boundaries) == (s.kind == "histogram") for s in SPECS.values())
