"""What server-based federated techniques share: client sampling under the fault model, local SGD on the
sampled clients, and the round's bookkeeping (steps, simulated compute time, who took part).

`Federated` is the base class of FedAvg, FedProx, SCAFFOLD/SCALLION/SCAFCOM,
FedVote and PGFed (MoDeST reuses its local training). A round of a subclass:

    plan = self.plan_round(ctx)              sample S = max(1, round(C·N)) clients, apply the faults
    if plan.stalled: return self.stall(ctx, plan)
    ... broadcast, then
    out = self.local_sgd(ctx, plan.participants, start, direction=...)
    ... upload, aggregate
    self.finish_round(ctx, plan)             steps and simulated time the server waited

Local steps of client i per round: `local_steps` if set, else FedAvg's
`local_epochs · ⌈n_i / B⌉` (clients with more data do more steps). Local
training is plain SGD with the config's `lr`, `momentum` (a fresh buffer each
round: clients are stateless) and `weight_decay`; `direction(g, y)` lets a
technique change the step direction (FedProx's proximal term, SCAFFOLD's
correction), while `grad_mean` keeps the average *raw* gradient of each
client over its steps (SCAFFOLD's control variate, robust to momentum; only
for techniques that set `keeps_grad_mean`).

Per round, the work is whole-tensor operations over the sampled clients:
sampling and the fault model act on (N,) masks, each client's local step
count is a precomputed (N,) tensor, rank -> row maps are tensors
(`Cluster.rows_of`), every local step gathers all clients' batches in one
indexing op (`lab.batches`) and updates all their models at once; clients with
fewer steps are masked with a mask built once per round, and a momentum buffer
exists only when `momentum` > 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lab.knobs import Knob, bad
from lab.sync.faults import ClientFaults, RoundPlan
from lab.technique import RoundResult, Technique, TrainContext


def sample_clients(num_clients: int, fraction: float, *, seed: int, round_index: int,
                   population=None) -> list[int]:
    """S = max(1, round(C·M)) of the M clients in `population` (default: all N) without replacement, from a
    generator seeded by (seed, round): the first S members in a random order of all N, ascending.
    `population`: client ids (a list or LongTensor), or an (N,) bool mask."""
    g = torch.Generator().manual_seed(seed * 100_003 + round_index)
    order = torch.randperm(num_clients, generator=g)  # (N,)
    if population is not None:
        member = torch.as_tensor(population)
        if member.dtype != torch.bool:
            member = torch.zeros(num_clients, dtype=torch.bool).index_fill_(0, member.long().reshape(-1), True)
        order = order[member[order]]  # (M,) the members, in the random order
    s = max(1, round(fraction * len(order)))
    return order[:s].sort().values.tolist()


@dataclass
class LocalTraining:
    clients: list[int]  # the clients this process trained, ascending
    rows: list[int]  # their local row indices in the cluster
    params: torch.Tensor  # (S_local, d) their models after training
    loss: torch.Tensor  # (S_local,) float64 mean training loss over each client's steps
    #: (S_local, d) mean raw gradient (with weight decay) over each client's steps; kept only by techniques that
    #: set `keeps_grad_mean` (SCAFFOLD's control variates), else None
    grad_mean: torch.Tensor | None


#: sign-flipping clients (lab.sync.faults): declared by the techniques whose uploads go through
#: `ClientFaults.flip` (or flip their own messages), in their `knobs`
BYZANTINE_CLIENTS = {
    "byzantine_clients": Knob(0, "clients that upload sign-flipped updates (chosen by the seed)", low=0, high=100_000),
}
BYZANTINE = {
    **BYZANTINE_CLIENTS,
    "byzantine_scale": Knob(1.0, "a sign-flipping client sends x - scale * (y - x)", low=0.0, low_open=True, high=1e6,
                            read_when=lambda c: c.byzantine_clients > 0, why="only byzantine_clients > 0 reads it",
                            probe_with={"byzantine_clients": 1}),
}
#: what `Federated.local_sgd` reads: a subclass that trains its clients with it lists these in its `reads`
LOCAL_SGD = ("momentum", "weight_decay")


class Federated(Technique):
    federated = True
    knobs = {
        "client_fraction": Knob(1.0, "fraction of clients sampled per round", low=0.0, low_open=True, high=1.0),
        "local_epochs": Knob(1, "local epochs per round (fedavg)", low=1, high=10_000,
                             read_when=lambda c: c.local_steps == 0, why="local_steps > 0 sets the local steps instead",
                             probe_with={"local_steps": 0}),
        "local_steps": Knob(0, "local steps per round (0 = local_epochs x ceil(n_i / B))", low=0, high=10**6),
        "dropout_prob": Knob(0.0, "probability a sampled client drops out of a round",
                             low=0.0, high=1.0, high_open=True),
        "straggler_prob": Knob(0.0, "probability a sampled client is a straggler", low=0.0, high=1.0, high_open=True),
        "round_deadline": Knob(0.0, "the server's deadline in multiples of the round's nominal compute time"
                                    " (0 = wait for every client)",
                               low=1.0, high=1e6, special=(0.0,), probe_with={"straggler_prob": 0.5}),
        "clients_stop": Knob(0, "clients that stop responding for good (chosen by the seed)", low=0, high=100_000),
        "stop_round": Knob(0, "the round from which those clients stop", low=0, high=10**6,
                           read_when=lambda c: c.clients_stop > 0, why="only clients_stop > 0 reads it",
                           probe_with={"clients_stop": 1}),
        # ---- faults during a round, leaves and joins (lab.sync.faults) ----
        "fail_prob": Knob(0.0, "probability a picked client crashes during the round, before sending"
                               " (silent; back next round)",
                          low=0.0, high=1.0, high_open=True),
        "return_round": Knob(0, "the round from which the stopped clients come back (0 = never)", low=0, high=10**6,
                             read_when=lambda c: c.clients_stop > 0, why="only clients_stop > 0 reads it",
                             probe=1,
                             probe_with={"clients_stop": 1, "stop_round": 0, "round_deadline": 2.0, "rounds": 3}),
        "clients_join": Knob(0, "clients that join late, at join_round (chosen by the seed; not among those that stop)",
                             low=0, high=100_000),
        "join_round": Knob(1, "the round from which the late clients are there (1: they miss the first round)",
                           low=1, high=10**6,
                           read_when=lambda c: c.clients_join > 0, why="only clients_join > 0 reads it",
                           probe_with={"clients_join": 1, "rounds": 4}),
    }
    budget = "rounds"
    #: whether `local_sgd` keeps each client's mean raw gradient (LocalTraining.grad_mean)
    keeps_grad_mean: bool = False

    @classmethod
    def check(cls, c) -> None:
        if c.clients_stop > c.num_workers:
            bad("clients_stop", c.clients_stop, f"at most num_workers={c.num_workers}")
        if c.return_round and c.return_round <= c.stop_round:
            bad("return_round", c.return_round, f"0 (never) or a round after stop_round={c.stop_round}")
        if c.clients_join and c.clients_join >= c.num_workers - c.clients_stop:
            bad("clients_join", c.clients_join, f"fewer than num_workers - clients_stop = "
                f"{c.num_workers - c.clients_stop} (someone else is there from the start)")
        if c.byzantine_clients and c.byzantine_clients >= c.num_workers:
            bad("byzantine_clients", c.byzantine_clients, f"fewer than num_workers={c.num_workers}")
        if c.compressor == "powersgd" and cls.compressor_path == "uplink":
            bad("compressor", c.compressor, f"a compressor whose messages a server decodes one by one for "
                f"technique={c.technique!r} (PowerSGD needs all-reduces among the workers)")

    def setup(self, ctx: TrainContext) -> None:
        self.global_row = ctx.cluster.params.detach()[0].clone()  # (d,) every rank starts from the same init
        self.sizes = ctx.batches.sizes.to(torch.float64)  # (P,) n_i; float64: the server's weights n_i / Σ n_j
        self.client_steps = self.steps_per_client()  # (P,) local steps of each client per round
        self.faults = ClientFaults.from_config(self.config, ctx.collective.world_size)
        self.stalled: RoundPlan | None = None

    def steps_per_client(self) -> torch.Tensor:
        """(P,) local steps of every client per round: `local_steps` if set, else E·⌈n_i / B⌉ (once, at setup)."""
        c = self.config
        if c.local_steps:
            return torch.full(self.sizes.shape, c.local_steps, dtype=torch.long)
        return c.local_epochs * torch.ceil(self.sizes / c.batch_size).long()

    def local_steps(self, rank: int) -> int:
        return int(self.client_steps[rank])

    # ---- the round template ---------------------------------------------------------------------
    def round(self, ctx: TrainContext) -> RoundResult:
        if self.stalled is not None:
            return self.stall(ctx)
        plan = self.plan_round(ctx)
        self.downlink(ctx, plan.sampled)
        if plan.stalled:
            return self.stall(ctx, plan)
        result = self.train_round(ctx, plan) if plan.participants else RoundResult(float("nan"))
        self.finish_round(ctx, plan)
        result.extras.update(plan.extras())
        return result

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        """The server sends the sampled clients what they start from (default: the global model)."""
        ctx.collective.server_broadcast(self.global_row, ranks=sampled, tag="model")

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        """Local training of `plan.participants`, their uploads and the server's update."""
        raise NotImplementedError

    # ---- helpers ------------------------------------------------------------------------------------
    def plan_round(self, ctx: TrainContext, sampled: list[int] | None = None) -> RoundPlan:
        """Sample this round's clients (or take `sampled`) and apply the fault model."""
        c = self.config
        if sampled is None:
            sampled = sample_clients(ctx.collective.world_size, c.client_fraction, seed=c.seed,
                                     round_index=ctx.rounds, population=self.faults.member_mask(ctx.rounds))
        ctx.ledger.step = ctx.step
        sampled = torch.as_tensor(sampled, dtype=torch.long)
        return self.faults.plan(sampled, round_index=ctx.rounds, steps=self.client_steps[sampled],
                                step_seconds=ctx.step_compute_seconds)

    def stall(self, ctx: TrainContext, plan: RoundPlan | None = None) -> RoundResult:
        """The server waits forever for a client that stopped (no deadline): this round and every later
        one does not complete; nothing more is sent, computed or timed."""
        if plan is not None:
            self.stalled = plan
        sampled = plan.sampled if plan is not None else []
        return RoundResult(float("nan"), RoundPlan(ctx.rounds, sampled, [], stalled=True).extras())

    def local_sgd(self, ctx: TrainContext, clients: list[int], start: torch.Tensor, *, direction=None) -> LocalTraining:
        """Train the `clients` this process holds from `start` (d,) for their local steps; writes their rows.

        direction(g (S, d), y (S, d), mine) -> (S, d) replaces the raw gradient g as the SGD direction.
        All clients step together, one (S, ·) tensor operation per step; clients with fewer steps than the
        longest are masked once their steps are done (they still draw their batches, so every client's data
        stream advances by the round's longest count, as it always has). When the clients are all the rows
        this process holds, in order, they train in the cluster's rows themselves (no copy in or out).
        """
        c = self.config
        mine, rows = ctx.cluster.rows_of(clients)  # (S,) the clients held here, (S,) their rows
        steps = self.client_steps[mine]  # (S,)
        in_place = (len(rows) == ctx.cluster.num_local and torch.equal(rows, torch.arange(len(rows)))
                    and start.untyped_storage().data_ptr() != ctx.cluster.params.untyped_storage().data_ptr())
        y = ctx.cluster.params.detach() if in_place else start.new_empty(len(mine), start.shape[0])
        y.copy_(start.expand_as(y))  # (S, d) every client starts from `start`
        loss_sum = torch.zeros(len(mine), dtype=torch.float64, device=y.device)
        grad_sum = torch.zeros_like(y) if self.keeps_grad_mean else None
        if len(mine):
            horizon = int(steps.max())
            ragged = bool((steps < horizon).any())  # masks only when counts differ, built once per round
            active = (steps > torch.arange(horizon).unsqueeze(1)).float().unsqueeze(2).to(y.device) if ragged \
                else None  # (T, S, 1)
            ids = mine.tolist()
            buf = None  # the momentum buffer (fresh each round); without momentum the step is the direction
            step, grad = (ctx.cluster.scratch(k, len(mine)) for k in ("step", "grad"))  # lr · buf, the gradient
            for t in range(horizon):
                ctx.check_stop()
                xb, yb = ctx.batches.next(mine)
                losses, g = ctx.cluster.loss_and_grad(y, xb, yb, out=grad)
                ctx.guard("loss", losses)
                if c.weight_decay:
                    g = g + c.weight_decay * y
                d = g if direction is None else direction(g, y, ids)
                if not c.momentum:
                    buf = d
                else:  # (a copy at first: the gradient's memory is reused next step)
                    buf = d.clone() if buf is None else c.momentum * buf + d
                if active is None:
                    y -= torch.mul(buf, c.lr, out=step)
                    loss_sum += losses.double()
                    if grad_sum is not None:
                        grad_sum += g
                else:
                    y -= torch.mul(c.lr * active[t], buf, out=step)
                    loss_sum += losses.double() * active[t].squeeze(1).double()
                    if grad_sum is not None:
                        grad_sum += active[t] * g
            if not in_place:
                ctx.cluster.set_rows(y, rows)
        div = steps.clamp(min=1).to(y.device)
        grad_mean = None if grad_sum is None else grad_sum / div.unsqueeze(1).float()
        return LocalTraining(mine.tolist(), rows.tolist(), y, loss_sum / div.double(), grad_mean)

    def mean_loss(self, ctx: TrainContext, out: LocalTraining, clients: list[int]) -> float:
        """Mean over `clients` (all processes) of their mean local training loss; not recorded."""
        per_client = torch.zeros(ctx.cluster.num_local, dtype=torch.float64, device=out.loss.device)
        trained = torch.as_tensor(out.clients, dtype=torch.long)
        counted = torch.isin(trained, torch.as_tensor(clients, dtype=torch.long))  # (S_local,)
        per_client[torch.as_tensor(out.rows, dtype=torch.long)[counted]] = out.loss[counted.to(out.loss.device)]
        total = ctx.collective.all_reduce(per_client.unsqueeze(1), op="sum", record=False)[0, 0]
        return float(total) / max(len(clients), 1)

    def finish_round(self, ctx: TrainContext, plan: RoundPlan) -> None:
        """Advance the step counter by the longest sampled client's steps and the clock by the server's wait."""
        ctx.step += int(self.client_steps[plan.sampled].max())
        ctx.compute_seconds += plan.seconds

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        return self.global_row

    def state_dict(self) -> dict:
        stalled = None if self.stalled is None else dataclasses.asdict(self.stalled)
        return {"global_row": self.global_row, "stalled": stalled}

    def load_state_dict(self, state: dict) -> None:
        self.global_row = state["global_row"]
        stalled = state.get("stalled")
        self.stalled = None if stalled is None else RoundPlan(**stalled)
