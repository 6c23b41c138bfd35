"""Data parallel: two Ray-actor workers (gloo) take the same update as one worker on the same global batch."""

from __future__ import annotations

import pytest
import torch

from tests.test_learner import numberline_turns
from vlmq.config import LearnerConfig, ModelConfig

pytestmark = pytest.mark.slow

# Float32 sums in a different order (two partial sums + all-reduce vs one sum): the gradients agree to
# ~1e-7 relative; after an AdamW step (lr 1e-2) and a target update the weights agree to 1e-5.
ATOL = 1e-5


def test_two_workers_equal_one_worker(ray_local, tiny_vlm_dir):
    from learner.trainer import Learner, LearnerGroup

    turns = numberline_turns(6)[:15]  # an odd count: the workers get 8 and 7 turns
    model_cfg = ModelConfig(path=str(tiny_vlm_dir))
    cfg = LearnerConfig(num_workers=2, lr=1e-2, critic_lr=1e-2, tau=0.1)
    single = Learner(model_cfg, cfg)
    group = LearnerGroup(model_cfg, cfg)
    try:
        for step in range(2):
            batch = turns if step == 0 else turns[::-1]
            ref = single.step(batch)
            got = group.step(batch)
            for key in ref:
                assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
        a, b = (ray_local.get(w.state_tensors.remote()) for w in group.workers)
        s = single.state_tensors()
        assert a.keys() == s.keys()
        for k in s:
            assert torch.equal(a[k], b[k]), k  # the workers stay identical (same summed gradients)
            assert torch.allclose(a[k], s[k], atol=ATOL, rtol=0), k
    finally:
        group.shutdown()
