"""Composed runs on 4 gloo processes: with H = 1 and no compression, DDP sharded S = 1, 2, 4 ways inside its
replicas ends where simulated DDP ends (1e-6); compressed shard-wise exchanges inside the groups of
counterparts (lab.compress.grouped: two-phase, all-gather, half precision) end where their simulated runs end
(1e-6), with the same Ledger on every rank."""
import pytest
import torch
from gloo_runs import run_on_gloo

from lab.experiment import ExperimentConfig, run

P = 4
BASE = dict(num_workers=P, steps=4, eval_every=2, batch_size=16, lr=0.01, optimizer="adamw")
#: H = 1, no compression: equal to DDP
EXACT = [dict(technique="ddp"), dict(technique="ddp", sharding_degree=2, zero_stage=3),
         dict(technique="ddp", sharding_degree=4, zero_stage=2)]
#: compressed or periodic: equal to their own simulated run
OWN = [dict(technique="local_sgd", sync_period=2, sharding_degree=2, zero_stage=2, compressor="topk",
            compression_ratio=0.1),
       dict(technique="ddp", sharding_degree=2, zero_stage=1, compressor="int8", compress_algorithm="all_gather"),
       dict(technique="streaming_diloco", sync_period=2, num_fragments=2, fragment_pattern="contiguous",
            outer_bits=16, sharding_degree=2, zero_stage=3)]


@pytest.mark.gloo
@pytest.mark.slow
def test_composed_runs_on_gloo_equal_ddp_and_their_simulated_runs(tmp_path):
    schemes = EXACT + OWN
    configs = [ExperimentConfig(**BASE, **s, backend="distributed").to_dict() for s in schemes]
    results = run_on_gloo(configs, P, tmp_path)
    sims = [run(ExperimentConfig(**BASE, **s), save=False, progress=False) for s in schemes]
    ddp = sims[0]
    for rank in range(P):
        got = results[rank]
        for scheme, g, sim in zip(schemes, got, sims):
            assert g["status"] == "finished", (scheme, g["error"])
            reference = ddp if scheme in EXACT else sim
            assert torch.allclose(g["params"][0], reference.worker_params[rank], atol=1e-6, rtol=0), scheme
            assert torch.allclose(g["model"], reference.model, atol=1e-6, rtol=0), scheme
            assert g["ledger"].equals(sim.ledger), scheme
