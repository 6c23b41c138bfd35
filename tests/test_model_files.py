"""A model folder reaches nodes that cannot see it: shipped once by the driver, unpacked per node."""

from __future__ import annotations

import pytest

from learner import model_files
from learner.model_files import local_model, ship
from vlmq.config import ModelConfig


def test_a_node_without_the_folder_loads_the_shipped_copy(ray_local, tiny_text_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "CACHE", tmp_path / "cache")
    here = ModelConfig(path=str(tiny_text_dir), text_only=True)
    shipped = ship(tiny_text_dir)
    assert local_model(here, shipped) is here  # the folder is there: used as it is
    empty = tmp_path / "mount"  # what a node shows where another node's folder is not shared
    empty.mkdir()
    there = local_model(ModelConfig(path=str(empty), text_only=True), shipped)
    copied = sorted(p.relative_to(there.path) for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert copied == sorted(p.relative_to(tiny_text_dir) for p in tiny_text_dir.rglob("*") if p.is_file())
    for p in copied:
        assert (tiny_text_dir / p).read_bytes() == (tmp_path / "cache" / shipped[0] / p).read_bytes()
    assert local_model(ModelConfig(path=str(empty)), shipped).path == there.path  # once per node
    with pytest.raises(FileNotFoundError, match=f"model.path {empty} does not exist on node"):
        local_model(ModelConfig(path=str(empty)), None)  # too large to ship, and not on shared storage
