"""FedAvg: sampled clients run local epochs from the global model; the server averages them.

Paper: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (spec: shared/techniques/sync_and_compression.md §A1).

Round r: the server samples S = max(1, round(C·N)) clients without replacement
(a generator seeded by (seed, r), so every process agrees), sends them the
global model (downlink, d fp32 each), each client runs E·⌈n_i/B⌉ plain-SGD
steps on its own data (clients with more data do more steps; `local_steps`
fixes the count instead), and uploads its model (uplink, d fp32 each); the
server sets x = Σ_i (n_i / Σ_j n_j) y_i over the clients that took part,
accumulated in ascending client order in float64 (weights too), then stored in
the run's dtype.

Knobs: `client_fraction` C, `local_epochs` E (or `local_steps`), `batch_size` B,
`lr`, `momentum` (a fresh momentum buffer each round: clients are stateless),
and the client faults of `lab.sync.faults` (dropouts, stragglers and a
deadline, clients that stop for good, sign-flipping clients). Without a
deadline the server waits for every sampled client, so one that stopped for
good stalls the run. `rounds` budgets the run. Steps use fixed-size batches
drawn from each client's reshuffled stream (a batch may wrap across an epoch),
since rank-stacked clients need equal batch shapes. Shared machinery:
`lab.sync.federated`.

Uplink compression (`compressor`, `compression_ratio`, `error_feedback`): each
participating client sends its update y_i − x through a `lab.compress.Channel`
(error-feedback state per client, updated only when it takes part) and the
server sets x ← x + Σ_i w_i decode(C(y_i − x)); uncompressed, this is the
average above.
"""
from __future__ import annotations

import torch

from lab.compress import make_channel
from lab.sync.faults import RoundPlan
from lab.sync.federated import BYZANTINE, LOCAL_SGD, Federated, LocalTraining, sample_clients
from lab.technique import RoundResult, TrainContext

__all__ = ["FedAvg", "sample_clients"]


class FedAvg(Federated):
    reads = LOCAL_SGD
    knobs = BYZANTINE
    name = "fedavg"
    label = "FedAvg"
    compressor_path = "uplink"

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.channel = make_channel(self.config, ctx)  # uplink compression (`compressor`, `error_feedback`)

    def direction(self, g: torch.Tensor, y: torch.Tensor, mine: list[int]) -> torch.Tensor:
        """The local SGD direction from the raw gradient g (S, d) at y (S, d): plain FedAvg uses g."""
        return g

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        direction = None if type(self).direction is FedAvg.direction else self.direction
        out = self.local_sgd(ctx, plan.participants, self.global_row, direction=direction)
        self.aggregate(ctx, out, plan.participants)
        extras = {"clients": len(plan.sampled)}
        if not self.channel.dense:
            extras.update(self.channel.columns())  # the compressed uplink's payload and traffic ratios
        return RoundResult(self.mean_loss(ctx, out, plan.participants), extras)

    def aggregate(self, ctx: TrainContext, out: LocalTraining, clients: list[int]) -> None:
        """x = Σ_i (n_i / Σ_j n_j) y_i over `clients` (sign-flipping clients upload x − s·(y − x))."""
        uploads = self.faults.flip(ctx.cluster.params.detach(), self.global_row, ctx.cluster.ranks)  # (n, d)
        weights = torch.zeros(ctx.collective.world_size, dtype=torch.float64)  # the server sums in float64
        weights[clients] = self.sizes[clients] / self.sizes[clients].sum()
        if self.channel.dense:
            self.global_row = ctx.collective.server_reduce(uploads, weights=weights, ranks=clients,
                                                           tag="model").clone()
            return
        # compressed uplink: clients send their update y_i − x through the channel (error feedback kept per
        # client, only for those taking part); the server adds the decoded weighted average to x
        active = torch.zeros(ctx.cluster.num_local, dtype=torch.bool, device=uploads.device)  # (n,) taking part
        active[ctx.cluster.rows_of(clients)[1]] = True
        delta = (uploads - self.global_row) * active.unsqueeze(1)  # (n, d) zero rows for absent clients
        self.channel.set_reference(self.global_row)
        update = self.channel.server_reduce(delta, ctx.collective, weights=weights, ranks=clients, active=active,
                                            tag="update")
        self.global_row = (self.global_row + update).to(self.global_row.dtype)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "channel": self.channel.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.channel.load_state_dict(state["channel"])
