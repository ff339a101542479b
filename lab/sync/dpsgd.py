"""D-PSGD: decentralized SGD — every rank takes local steps, then averages with its graph neighbours.

Paper: Lian et al. 2017, "Can Decentralized Algorithms Outperform Centralized
Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
Descent". There is no all-reduce: after every `sync_period` H local steps
each rank i replaces its parameters by Σ_j W[i, j] x_j, with W the mixing
matrix of the gossip graph (`lab.gossip`; the one-peer exponential graph
changes with the gossip round). Sent per gossip round: the parameters, d fp32
values, to each of a rank's out-neighbours (deg · 4d bytes per rank: 2 on a
ring, log2 n on the exponential graph, 1 on the one-peer exponential graph).

The metrics column `consensus_distance` is sqrt(1/n Σ_i ‖x_i − x̄‖²) right
after mixing (an observer's view, not sent); `spectral_gap` is the graph's
1 − |λ₂|. The evaluated model is the average x̄. With the complete graph and
H = 1 (plain SGD) every rank holds x̄ − lr·mean(g): DDP, up to float
association. The paper's algorithm gossips after every step (H = 1); H > 1 is
periodic gossip with local steps in between (the round is `lab.sync.periodic`'s,
so H is the shared `sync_period` knob and its default, 16). Knobs: `graph`,
`sync_period`, `graph_degree` (random_regular), `seed` (the random graph).
Optimizer state stays local.
"""
from __future__ import annotations

import torch

from lab.gossip import GRAPHS, TIME_VARYING, describe, mixing_matrix
from lab.knobs import Knob, bad
from lab.sync.periodic import PeriodicSync
from lab.technique import TrainContext


class DPSGD(PeriodicSync):
    name = "dpsgd"
    label = "D-PSGD"
    label_knobs = ("graph",)
    defaults = {"sync_period": 1}  # D-PSGD gossips after every local step (Lian et al. 2017)
    knobs = {
        "graph": Knob("ring", "gossip graph", choices=GRAPHS),
        "graph_degree": Knob(4, "neighbours per rank", low=1, high=100_000,
                             read_when=lambda c: c.graph == "random_regular",
                             why="only graph='random_regular' reads it",
                             probe_with={"graph": "random_regular", "num_workers": 8}),
    }

    @classmethod
    def check(cls, c) -> None:
        if c.graph == "random_regular":
            try:
                mixing_matrix("random_regular", c.num_workers, degree=c.graph_degree, seed=c.seed)
            except ValueError as e:
                bad("graph_degree", c.graph_degree, str(e).split(": ", 1)[-1])

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        c = self.config
        self.gossip_rounds = 0
        self.fixed = None if c.graph in TIME_VARYING else self._weights(ctx, 0)
        self.gap = describe(c.graph, ctx.collective.world_size, degree=c.graph_degree, seed=c.seed)["spectral_gap"]

    def _weights(self, ctx: TrainContext, t: int) -> torch.Tensor:  # (P, P)
        c = self.config
        w = mixing_matrix(c.graph, ctx.collective.world_size, t=t, degree=c.graph_degree, seed=c.seed)
        return torch.tensor(w, dtype=torch.float32)

    def sync(self, ctx: TrainContext) -> dict:
        w = self.fixed if self.fixed is not None else self._weights(ctx, self.gossip_rounds)
        mixed = ctx.collective.mix(ctx.cluster.params.detach(), weights=w, tag="params")  # (n, d)
        ctx.cluster.set_rows(mixed)
        self.gossip_rounds += 1
        return {"consensus_distance": consensus_distance(ctx), "spectral_gap": self.gap}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gossip_rounds": self.gossip_rounds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gossip_rounds = state["gossip_rounds"]


def consensus_distance(ctx: TrainContext) -> float:
    """sqrt(1/n Σ_i ‖x_i − x̄‖²) over all ranks' parameters (not recorded in the Ledger)."""
    rows = ctx.cluster.params.detach()
    mean = ctx.mean_over_ranks(rows)  # (d,)
    sq = ((rows - mean) ** 2).sum(dim=1)  # (n,)
    return float(ctx.collective.mean_metric(sq)) ** 0.5
