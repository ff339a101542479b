"""The same technique on 4 real gloo processes ends where the simulated run ends."""
import pytest
import torch

from lab.experiment import ExperimentConfig, run
from lab.launch import run_distributed

pytestmark = pytest.mark.gloo


@pytest.mark.parametrize("technique,extra", [
    ("local_sgd", dict(sync_period=8, steps=48)),
    ("ddp", dict(steps=24, compressor="topk", compression_ratio=0.1)),
    ("fedavg", dict(rounds=3, client_fraction=0.5, partition="shards")),
])
def test_distributed_run_equals_simulated_run(technique, extra):
    cfg = ExperimentConfig(technique=technique, num_workers=4, eval_every=8, **extra)
    sim = run(cfg, save=False, progress=False)
    ranks = run_distributed(cfg)
    for r in ranks:
        assert r.status == "finished"
        assert torch.allclose(r.worker_params[0], sim.worker_params[r.rank], atol=1e-6, rtol=0)
        assert torch.allclose(r.model, sim.model, atol=1e-6, rtol=0)
        # the Ledger is computed from payloads every process sees: identical bytes, calls and times
        assert r.ledger.equals(sim.ledger)
    cols = ["step", "round", "bytes", "bytes_uplink", "bytes_downlink", "sim_seconds"]
    assert ranks[0].metrics[cols].equals(sim.metrics[cols])
