"""Placement on a simulated 2-node cluster: runners spread over both nodes, the sampler and the learner
take the GPU node; GPUs come from the cluster's resources, never from the driver's own torch."""

from __future__ import annotations

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from actors.placement import start_runners, start_samplers
from actors.scripted_backend import ScriptedBackend
from learner.trainer import LearnerGroup, worker_gpus
from vlmq.config import LearnerConfig, ModelConfig, RunConfig


def test_learner_gpus_come_from_the_cluster_not_the_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the driver's torch sees a GPU...
    assert worker_gpus(LearnerConfig(), {"CPU": 8.0}) == 0.0  # ...the cluster has none: none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only head...
    assert worker_gpus(LearnerConfig(), {"CPU": 8.0, "GPU": 2.0}) == 1.0  # ...of a GPU cluster: one each
    assert worker_gpus(LearnerConfig(num_gpus=0), {"GPU": 2.0}) == 0.0  # learner.num_gpus decides
    assert worker_gpus(LearnerConfig(num_gpus=0.5), {}) == 0.5


@pytest.mark.slow
def test_runners_spread_over_nodes_the_sampler_and_the_learner_take_gpus(tmp_path, tiny_text_dir):
    if ray.is_initialized():  # a module before this one left a local instance; the cluster needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_node = cluster.add_node(num_cpus=4, num_gpus=2)  # GPUs as a resource only: placement, not CUDA
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
        # the learner worker: in a placement group bundle with the cluster's other GPU and its 2 CPUs,
        # which torch runs as 2 threads
        group = LearnerGroup(ModelConfig(path=str(tiny_text_dir), text_only=True), LearnerConfig(num_cpus=2))

        def where(self):
            return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids(), torch.get_num_threads()

        node, gpu_ids, threads = ray.get(group.workers[0].__ray_call__.remote(where))
        assert node == gpu_node.node_id and len(gpu_ids) == 1
        assert group.bundle["CPU"] == 2 and threads == 2
        group.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
