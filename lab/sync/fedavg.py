"""FedAvg: sampled clients run local epochs from the global model; the server averages them.

Paper: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (spec: shared/techniques/sync_and_compression.md §A1).

Round r: the server samples S = max(1, round(C·N)) clients without replacement
(a generator seeded by (seed, r), so every process agrees), sends them the
global model (downlink, d fp32 each), each client runs E·⌈n_i/B⌉ plain-SGD
steps on its own data (clients with more data do more steps), and uploads its
model (uplink, d fp32 each); the server sets x = Σ_i (n_i / Σ_j n_j) y_i over
the sampled clients, accumulated in ascending client order.

Knobs: `client_fraction` C, `local_epochs` E, `batch_size` B, `lr`, `momentum`
(a fresh momentum buffer each round: clients are stateless). `rounds` budgets
the run. Steps use fixed-size batches drawn from each client's reshuffled
stream (a batch may wrap across an epoch), since rank-stacked clients need
equal batch shapes.
"""
from __future__ import annotations

import math

import torch

from lab.technique import RoundResult, Technique, TrainContext


def sample_clients(num_clients: int, fraction: float, *, seed: int, round_index: int) -> list[int]:
    s = max(1, round(fraction * num_clients))
    g = torch.Generator().manual_seed(seed * 100_003 + round_index)
    return sorted(torch.randperm(num_clients, generator=g)[:s].tolist())


class FedAvg(Technique):
    name = "fedavg"
    budget = "rounds"

    def setup(self, ctx: TrainContext) -> None:
        self.global_row = ctx.cluster.params.detach()[0].clone()  # (d,) every rank starts from the same init
        self.sizes = torch.tensor([ctx.batches.shard_size(r) for r in range(ctx.collective.world_size)],
                                  dtype=torch.float32)  # (P,) n_i

    def local_steps(self, rank: int) -> int:
        return self.config.local_epochs * math.ceil(self.sizes[rank].item() / self.config.batch_size)

    def round(self, ctx: TrainContext) -> RoundResult:
        c = self.config
        sampled = sample_clients(ctx.collective.world_size, c.client_fraction, seed=c.seed, round_index=ctx.rounds)
        ctx.ledger.step = ctx.step
        ctx.collective.server_broadcast(self.global_row, ranks=sampled, tag="model")
        mine = [r for r in sampled if r in ctx.cluster.ranks]  # the sampled clients this process runs
        rows = [ctx.cluster.local_index(r) for r in mine]
        steps = torch.tensor([self.local_steps(r) for r in mine], dtype=torch.long)  # (S_local,)
        max_steps = max(self.local_steps(r) for r in sampled)
        loss_sum = torch.zeros(ctx.cluster.num_local, dtype=torch.float64)
        if mine:
            y = self.global_row.expand(len(mine), -1).clone()  # (S_local, d)
            buf = torch.zeros_like(y)
            for t in range(int(steps.max())):
                active = (steps > t).float().unsqueeze(1)  # clients that still have steps to run
                xb, yb = ctx.batches.next(mine)
                losses, g = ctx.cluster.loss_and_grad(y, xb, yb)
                if c.weight_decay:
                    g = g + c.weight_decay * y
                buf = c.momentum * buf + g
                y = y - c.lr * active * buf
                loss_sum[rows] += losses.double() * active.squeeze(1).double()
            ctx.cluster.set_rows(y, rows)
        ctx.step += max_steps
        ctx.compute_seconds += max_steps * ctx.step_compute_seconds  # the round waits for the slowest client
        weights = torch.zeros(ctx.collective.world_size)
        weights[sampled] = self.sizes[sampled] / self.sizes[sampled].sum()
        self.global_row = ctx.collective.server_reduce(ctx.cluster.params.detach(), weights=weights, ranks=sampled,
                                                       tag="model").clone()
        per_client = torch.zeros(ctx.cluster.num_local, dtype=torch.float64)
        for r, row in zip(mine, rows):
            per_client[row] = loss_sum[row] / self.local_steps(r)
        total = ctx.collective.all_reduce(per_client.unsqueeze(1), op="sum", record=False)[0, 0]
        return RoundResult(float(total) / len(sampled), {"clients": len(sampled)})

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        return self.global_row

    def state_dict(self) -> dict:
        return {"global_row": self.global_row}

    def load_state_dict(self, state: dict) -> None:
        self.global_row = state["global_row"]
