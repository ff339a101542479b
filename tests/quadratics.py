"""Heterogeneous quadratic clients (spec Appendix A.2) as a lab TrainContext, so the real technique classes run on them.

Client i minimises f_i(x) = ½ (x − b_i)ᵀ H_i (x − b_i) with H_i = diag(U[0.5, 5]), b_i ~ N(0, 9 I),
drawn with numpy's default_rng(0) in the spec's order, N = 10, d = 20. Its one "example" holds (h_i, b_i);
full-batch gradients, so local steps are deterministic GD. x* minimises the sum (every client has one example,
so FedAvg's n_i weights are uniform).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lab.cluster import Cluster
from lab.comm import Ledger, SimulatedCollective
from lab.data import RankBatches
from lab.experiment import ExperimentConfig
from lab.models import ModelSpec
from lab.registry import technique as technique_class
from lab.technique import TrainContext
from lab.topology import preset


class Point(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, inp):  # (B, 2, d) rows (h, b) -> (B,) per-example loss
        return 0.5 * (inp[:, 0] * (self.x - inp[:, 1]) ** 2).sum(-1)


def problem(n: int = 10, d: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    hs = np.stack([rng.uniform(0.5, 5, d) for _ in range(n)])
    bs = np.stack([rng.normal(0, 3, d) for _ in range(n)])
    xstar = (hs * bs).sum(0) / hs.sum(0)
    return torch.tensor(hs, dtype=torch.float64), torch.tensor(bs, dtype=torch.float64), torch.tensor(xstar)


def make_context(config: ExperimentConfig, hs: torch.Tensor, bs: torch.Tensor) -> TrainContext:
    n, d = hs.shape
    data = torch.stack([hs, bs], dim=1)  # (N, 2, d) float64
    shards = [torch.tensor([i]) for i in range(n)]
    batches = RankBatches(data, torch.zeros(n), shards, batch_size=1, seed=config.seed, ranks=list(range(n)))
    model = Point(d)
    spec = ModelSpec(model, lambda out, y: out.mean(), lambda out, y: {}, 1.0)
    cluster = Cluster(model, num_workers=n, loss_fn=spec.loss_fn)
    # float64 like the spec's numpy script: fp32 rounding alone leaves ||x - x*|| near 1e-6 here
    cluster.params = cluster.params.detach().double().requires_grad_(True)
    topology = preset(config.topology, n)
    ledger = Ledger(topology)
    return TrainContext(config, cluster, SimulatedCollective(world_size=n, ledger=ledger), ledger, topology, batches,
                        spec, None)


def distance_after(technique: str, rounds: int, *, hs=None, bs=None, xstar=None, **overrides) -> float:
    """||x − x*|| after `rounds` rounds of `technique` with K = 10 local steps, lr 0.02, full participation."""
    if hs is None:
        hs, bs, xstar = problem()
    cfg = ExperimentConfig(technique=technique, num_workers=hs.shape[0], local_steps=10, lr=0.02, topology="phones",
                           rounds=rounds, **overrides)
    ctx = make_context(cfg, hs, bs)
    tech = technique_class(technique)(cfg)
    tech.setup(ctx)
    for _ in range(rounds):
        tech.round(ctx)
        ctx.rounds += 1
    return float((tech.model_row(ctx).double() - xstar).norm())
