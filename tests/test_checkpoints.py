"""A run's checkpoints under one storage root (a folder or an fsspec URL), and what each node sees."""

from __future__ import annotations

import json

import pytest

from vlmq.checkpoints import Checkpoints, step_name


@pytest.mark.parametrize("root", ["folder", "memory"])
def test_latest_moves_only_on_commit(tmp_path, root):
    ckpts = Checkpoints(str(tmp_path / "ckpts") if root == "folder" else f"memory://{tmp_path.name}/ckpts")
    assert ckpts.latest() is None and ckpts.names() == []
    for updates in (200, 400):
        name = step_name(updates)
        ckpts.write_text(name, "driver.json", json.dumps({"updates": updates}))
        assert ckpts.latest() == (None if updates == 200 else step_name(200))  # not yet committed
        ckpts.commit(name)
        assert ckpts.latest() == name
    assert ckpts.names() == ["step_0000200", "step_0000400"]
    assert ckpts.driver_state(ckpts.latest()) == {"updates": 400}
    assert ckpts.read_text("step_0000400", "config.yaml") is None
    ckpts.write_text("step_0000600", "config.yaml", "name: x\n")  # a checkpoint that died half-way
    with pytest.raises(FileNotFoundError, match="step_0000600 has no driver.json"):
        ckpts.driver_state("step_0000600")
    assert ckpts.folder("step_0000400").endswith("ckpts/step_0000400")


def test_nodes_without_a_path_are_named(ray_local, tmp_path):
    import ray

    from vlmq.nodes import check_reachable, nodes_without

    (tmp_path / "here").mkdir()
    assert nodes_without(str(tmp_path / "here")) == []
    (missing,) = nodes_without(str(tmp_path / "nowhere"))
    assert missing["NodeID"] == ray.get_runtime_context().get_node_id()
    assert nodes_without(str(tmp_path / "nowhere"), {"no_such_resource": 1}) == []  # no node may hold it
    check_reachable(str(tmp_path / "root"), {}, "replay.root")  # a local path on a single node: seen
    assert list((tmp_path / "root").iterdir()) == []  # the marker is gone
