"""Placement on a simulated 2-node cluster: runners spread over both nodes, the sampler takes the GPU node."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.placement import start_runners, start_samplers
from actors.scripted_backend import ScriptedBackend
from vlmq.config import RunConfig


@pytest.mark.slow
def test_runners_spread_over_nodes_and_the_sampler_takes_a_gpu(tmp_path):
    if ray.is_initialized():  # a module before this one left a local instance; the cluster needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)  # a GPU as a resource only: placement, not CUDA
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        cluster.wait_for_nodes()
        cfg = RunConfig()
        cfg.model.path = "/nonexistent"
        cfg.sampler.backend = "hf"  # a model backend asks for a GPU; the scripted object stands in for it
        cfg.runner.num_runners, cfg.runner.envs_per_runner = 2, 2
        samplers = start_samplers(cfg, tmp_path, backend=ScriptedBackend("random"))
        runners = start_runners(cfg, samplers, None, num_cpus=1)
        stats = ray.get([r.run.remote(20) for r in runners])
        assert all(s["turns"] >= 20 for s in stats)
        assert len({s["node_id"] for s in stats}) == 2  # one runner on each node
        assert ray.get(samplers[0].stats.remote())["node_id"] == gpu_node.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
