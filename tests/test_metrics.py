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


def test_the_progress_line_shows_the_phases_rate_and_eta(tmp_path, monkeypatch, caplog):
    import logging
    import time

    from vlmq.monitor import Monitor

    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monitor = Monitor(tmp_path, "t")
    monitor.phase("offline", 20)  # a resumed phase: the rate counts from where it began
    clock[0] += 30.0
    with caplog.at_level(logging.INFO):
        monitor.line(80, 200, "updates", "actor 0.5")
    assert "[offline] 80/200 updates (2.00/s, ETA 00:01:00) actor 0.5" in caplog.text


def test_the_summary_table_gives_a_row_per_key_of_a_dict_value():
    from vlmq.monitor import table

    rows = [("wall_s", 2.5), ("phase_s", {"start": 1.25, "online": 3.0}), ("updates", 4)]
    assert table(rows).splitlines() == [
        "metric          value",
        "--------------  -----",
        "wall_s          2.500",
        "phase_s.start   1.250",
        "phase_s.online  3.000",
        "updates         4",
    ]
