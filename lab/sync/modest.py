"""MoDeST: federated learning without a server — sampled trainers, aggregators from the next sample.

Paper: de Vos et al. 2023, "MoDeST: Bridging the Gap between Federated and
Decentralized Learning with Decentralized Sampling", arXiv 2302.13837 (later
published as Plexus); spec §A8, round and defaults [CODE] from
devos50/decentralized-learning; s and a for the lab [UNVERIFIED].

Idea: every node can compute the same pseudo-random order of the peers for
round r — sort its view of active peers by md5(peer || "-" || r) — so a sample
of s trainers and a aggregators needs no coordinator. Round r:

    trainers  = the first s responsive peers of order(r) (pinged by the previous aggregators)
    each trainer: K local steps from the model it received
    aggregators A = the first a responsive peers of order(r+1); every trainer sends its model to each
    each aggregator: once ⌈success_fraction · s⌉ models arrived, average them (plain mean)
    each aggregator sends the average to the first s responsive peers of order(r+1): the next trainers

Failures: peers that stop answering are skipped when pinged (a ping to a dead
peer costs the ping timeout on the simulated clock, once per phase) and leave
everyone's view; with a aggregators, up to a−1 aggregator failures are masked;
with success_fraction < 1 (or a deadline, `round_deadline`) an aggregator does
not wait for every trainer. Trainers chosen at the end of round r−1 that stop
in round r simply never deliver. If no model arrives by the deadline, the
round fails and the next trainers start from the last average. Faults come
from `lab.sync.faults` (dropouts, stragglers, clients that stop for good).

Sent per round: trainers → aggregators s·a models, aggregators → next
trainers a·s models (2·a·s·4d bytes, peer links; nothing between a client and
a server), plus 8-byte pings. Knobs: `client_fraction` (s = max(1, round(C·N))),
`modest_aggregators` (a), `success_fraction`, `local_steps`/`local_epochs`,
`lr`, `momentum`. With s = N, a = 1 and no failures MoDeST equals FedAvg with
full participation on equal shards (FedAvg weighs by n_i, MoDeST does not).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from lab.knobs import Knob, bad
from lab.sync.faults import RoundPlan
from lab.sync.federated import Federated
from lab.technique import RoundResult, TrainContext
from lab.topology import LINK_CLASSES, Cost

PING_BYTES = 8  # a round number
PING_TIMEOUT_S = 5.0  # the code's ping timeout


def order(peers, round_index: int) -> list[int]:
    """Every node's shared order of `peers` for one round: by md5(peer || '-' || round)."""
    return sorted(peers, key=lambda p: hashlib.md5(f"{p}-{round_index}".encode()).hexdigest())


class MoDeST(Federated):
    name = "modest"
    label = "MoDeST"
    label_knobs = ("modest_aggregators",)
    knobs = {
        "modest_aggregators": Knob(1, "aggregators a per round (1..num_workers)", low=1, high=100_000),
        "success_fraction": Knob(1.0, "fraction of the sample's models an aggregator waits for", low=0.0, low_open=True, high=1.0),
    }

    @classmethod
    def check(cls, c) -> None:
        super().check(c)
        if c.modest_aggregators > c.num_workers:
            bad("modest_aggregators", c.modest_aggregators, f"an integer in [1, num_workers={c.num_workers}]")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        n = ctx.collective.world_size
        self.view = set(range(n))  # peers every node believes active
        self.s = max(1, round(self.config.client_fraction * n))
        # round 0's trainers: the first s of order(0) (everyone starts from the same model)
        self.trainers = order(self.view, 0)[: self.s]

    def _ping(self, ctx: TrainContext, pinger: list[int], want: int, round_index: int, alive_at: int) -> list[int]:
        """The first `want` responsive peers of order(round_index); records the pings and any timeout."""
        found, dead = [], []
        for p in order(self.view, round_index):
            if len(found) == want:
                break
            (found if self.faults.alive(p, alive_at) else dead).append(p)
        src = pinger[0] if pinger else 0
        pairs = [(src, p) for p in found + dead if p != src]
        if pairs:
            ctx.collective.record_peers(pairs, PING_BYTES, op="ping", tag="ping")
        if dead:  # a parallel ping round waits for the timeout once; the dead leave everyone's view
            none = {cls: np.zeros(ctx.collective.world_size, dtype=np.int64) for cls in LINK_CLASSES}
            ctx.ledger.record("ping_timeout", 0, tag="ping", cost=Cost(PING_TIMEOUT_S, "timeout", none, 0))
            self.view -= set(dead)
        return found

    def round(self, ctx: TrainContext) -> RoundResult:
        if self.stalled is not None:  # still waiting for a trainer that will never deliver
            return self.stall(ctx)
        c, r, n = self.config, ctx.rounds, ctx.collective.world_size
        ctx.ledger.step = ctx.step
        trainers = self.trainers
        steps = {t: self.local_steps(t) for t in trainers}
        finish, dropped, deadline_s = self.faults.finish_times(trainers, round_index=r, steps=steps,
                                                               step_seconds=ctx.step_compute_seconds)
        delivering = sorted((t for t in finish if finish[t] < math.inf), key=lambda t: (finish[t], t))
        out = self.local_sgd(ctx, delivering, self.global_row)  # start: the model they received (all equal)
        aggregators = self._ping(ctx, delivering, c.modest_aggregators, r + 1, alive_at=r)
        need = math.ceil(c.success_fraction * len(trainers))
        in_time = [t for t in delivering if finish[t] <= deadline_s]
        if len(in_time) >= need > 0:
            wait = finish[in_time[need - 1]]
            used = sorted(t for t in in_time if finish[t] <= wait)
        elif deadline_s < math.inf:
            wait, used = deadline_s, sorted(in_time)
        else:  # waits forever for a trainer that will never deliver
            plan = RoundPlan(r, trainers, [], dropped=dropped, stalled=True)
            return self.stall(ctx, plan)
        plan = RoundPlan(r, trainers, used, dropped=dropped,
                         silent=[t for t in trainers if finish.get(t) == math.inf],
                         late=[t for t in delivering if t not in used], seconds=wait)
        x = ctx.cluster.params.detach()
        if used and aggregators:
            # trainers -> aggregators: every aggregator averages the models that arrived in time
            w1 = torch.eye(n)
            for a in aggregators:
                w1[a] = 0.0
                w1[a, used] = 1.0 / len(used)
            x = ctx.collective.mix(x, weights=w1, tag="model_to_aggregators")
            late = [(t, a) for t in delivering if t not in used for a in aggregators if t != a]
            if late:  # sent, but after the aggregator moved on
                ctx.collective.record_peers(late, x[0].numel() * x.element_size(), op="mix",
                                            tag="model_to_aggregators")
            # the observer's copy of the average (evaluation only, not sent)
            self.global_row = ctx.collective.all_gather(x, record=False)[0][aggregators[0]].clone()
        nxt = self._ping(ctx, aggregators, self.s, r + 1, alive_at=r)
        # aggregators -> next trainers (identical copies from each aggregator; a receiver keeps the first)
        w2 = torch.eye(n)
        for t in nxt:
            w2[t] = 0.0
            w2[t, aggregators[0] if aggregators and used else t] = 1.0
        if aggregators and used:
            x = ctx.collective.mix(x, weights=w2, tag="model_to_trainers")
            copies = [(a, t) for a in aggregators[1:] for t in nxt if a != t]
            if copies:
                ctx.collective.record_peers(copies, x[0].numel() * x.element_size(), op="mix", tag="model_to_trainers")
        ctx.cluster.set_rows(x)
        ctx.cluster.set_rows(self.global_row, [ctx.cluster.local_index(t) for t in nxt if t in ctx.cluster.ranks])
        self.trainers = nxt
        ctx.step += max(steps.values(), default=0)
        ctx.compute_seconds += plan.seconds
        loss = self.mean_loss(ctx, out, used) if used else float("nan")
        return RoundResult(loss, {**plan.extras(), "aggregators": ",".join(map(str, aggregators))})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "view": sorted(self.view), "trainers": list(self.trainers)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.view, self.trainers = set(state["view"]), list(state["trainers"])
