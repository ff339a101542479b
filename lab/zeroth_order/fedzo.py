"""FedZO (Fang, Yu, Jiang, Shi, Jones, Zhou 2022, "Communication-Efficient Stochastic Zeroth-Order
Optimization for Federated Learning", IEEE TSP): FedAvg whose clients see only function values.

The plain federated zeroth-order baseline (FZooS compares with it as RGF). Client i, local step
t = 0..H−1 from the global model:

    v_1..v_b ~ uniform on the unit sphere, fresh each step        b = `fedzo_directions`
    g = (d / (b μ)) Σ_j [f_i(x + μ v_j) − f_i(x)] v_j              μ = `zo_eps`
    x ← x − lr · g       (plain SGD, the paper's; `momentum`, `weight_decay` as FedAvg's clients)

and the server averages the clients' models with data-size weights (the
paper's server step with global rate 1; partial participation and the fault
model as FedAvg's). A client's objective f_i is its loss over its whole shard:
deterministic, as the black-box functions of FZooS's experiments [RECON: FedZO
draws a minibatch of b1 examples per query; here b1 = the shard]. Directions
come from a generator seeded by (seed, round, client).

`optimizer='adamw'` steps with Adam instead (`adam_beta1`, `adam_beta2`, a
fresh state each round): that is FedZO as FZooS's experiments run it (their
RGF baseline with no correction shares FZooS's Adam optimizer and step size).

What is sent: as FedAvg, 4d bytes down and 4d up per participating client.
Queries: b + 1 per local step (the metrics column `queries` counts every
function value any client computed, cumulatively). Knobs: `fedzo_directions`,
`zo_eps`, `lr`, `optimizer`, `local_steps` / `local_epochs`, `client_fraction`,
the faults.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob, bad
from lab.optim import adam_betas, optimizer_name
from lab.sync.faults import RoundPlan
from lab.sync.federated import LOCAL_SGD, Federated, LocalTraining
from lab.technique import RoundResult, TrainContext
from lab.zeroth_order.common import ZO_KNOBS, row_losses

#: a shard is evaluated in chunks of this many models at once (bounds the memory of a batched query)
QUERY_CHUNK = 32


def shard_objective(ctx: TrainContext, client: int):
    """f_i: models (k, d) -> client `client`'s mean loss over its whole shard (k,), float64, no gradient."""
    idx = ctx.batches.shards[client]
    x, y = ctx.batches.x[idx], ctx.batches.y[idx]

    def f(params: torch.Tensor) -> torch.Tensor:
        params = params.float()
        out = []
        for chunk in params.split(QUERY_CHUNK):
            k = chunk.shape[0]
            out.append(row_losses(ctx, chunk, x.expand(k, *x.shape), y.expand(k, *y.shape)).double())
        return torch.cat(out)

    return f


def count_queries(ctx: TrainContext, local: int) -> int:
    """Queries made by every process's clients, from this process's count `local` (not recorded)."""
    rows = torch.zeros(ctx.cluster.num_local, 1, dtype=torch.float64)
    rows[0, 0] = local
    return int(ctx.collective.all_reduce(rows, op="sum", record=False)[0, 0])


def sphere(num: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """`num` directions uniform on the unit sphere in R^d: (num, d)."""
    v = torch.randn(num, d, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


class FedZO(Federated):
    name = "fedzo"
    label = "FedZO"
    default_lr = 0.01  # the d/μ-scaled estimate at 0.5 overshoots
    knobs = {
        **ZO_KNOBS,
        "fedzo_directions": Knob(20, "fedzo: random directions b per gradient estimate (b + 1 queries per step)",
                                 low=1, high=100_000),
    }
    reads = LOCAL_SGD + ("optimizer", "adam_beta1", "adam_beta2")
    contract_settings = {"local_steps": 3}

    @classmethod
    def check(cls, c) -> None:
        super().check(c)
        if optimizer_name(c) not in ("sgd", "adamw"):
            bad("optimizer", c.optimizer, "'sgd' (FedZO's) or 'adamw' (Adam, as FZooS's experiments run it) for "
                "technique='fedzo'")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.queries = 0

    def client(self, ctx: TrainContext, r: int, steps: int) -> tuple[torch.Tensor, float]:
        """Client r's H zeroth-order steps from the global model: (its model (d,), mean f_i at its iterates)."""
        c = self.config
        f = shard_objective(ctx, r)
        gen = torch.Generator().manual_seed((c.seed * 1_000_003 + ctx.rounds) * 10_007 + r)
        x = self.global_row.double()
        d, b, mu = x.numel(), c.fedzo_directions, c.zo_eps
        adam = optimizer_name(c) == "adamw"
        (b1, b2), m, v2 = adam_betas(c), torch.zeros_like(x), torch.zeros_like(x)
        seen = []
        for t in range(steps):
            v = sphere(b, d, gen)  # (b, d)
            values = f(torch.cat([x.unsqueeze(0), x + mu * v]))  # (1 + b,)
            g = (d / (b * mu)) * ((values[1:] - values[0]).unsqueeze(1) * v).sum(0)
            seen.append(float(values[0]))
            self.queries += 1 + b
            if adam:  # Adam, decoupled weight decay
                m, v2 = b1 * m + (1 - b1) * g, b2 * v2 + (1 - b2) * g * g
                x = x * (1 - c.lr * c.weight_decay) - c.lr * (m / (1 - b1 ** (t + 1))) / (
                    (v2 / (1 - b2 ** (t + 1))).sqrt() + 1e-8)
            else:
                m = c.momentum * m + g + c.weight_decay * x
                x = x - c.lr * m
        return x.float(), sum(seen) / max(len(seen), 1)

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        clients = plan.participants
        mine = [r for r in clients if r in ctx.cluster.ranks]
        rows = [ctx.cluster.local_index(r) for r in mine]
        xs = ctx.cluster.params.detach().clone()  # (n, d)
        loss = torch.zeros(len(mine), dtype=torch.float64)
        for j, (r, row) in enumerate(zip(mine, rows)):
            xs[row], loss[j] = self.client(ctx, r, self.local_steps(r))
        if mine:
            ctx.cluster.set_rows(xs[rows], rows)
        weights = torch.zeros(ctx.collective.world_size, dtype=self.sizes.dtype)
        weights[clients] = self.sizes[clients] / self.sizes[clients].sum()
        self.global_row = ctx.collective.server_reduce(xs, weights=weights, ranks=clients, tag="model").clone()
        total = count_queries(ctx, self.queries)
        out = LocalTraining(mine, rows, xs[rows], loss, None)
        return RoundResult(self.mean_loss(ctx, out, clients), {"queries": int(total)})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "queries": self.queries}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.queries = state["queries"]
