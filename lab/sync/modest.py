"""MoDeST: federated learning without a server — sampled trainers, aggregators from the next sample.

Paper: de Vos et al. 2023, "MoDeST: Bridging the Gap between Federated and
Decentralized Learning with Decentralized Sampling", arXiv 2302.13837 (later
published as Plexus); spec §A8, round and defaults [CODE] from
devos50/decentralized-learning (accdfl/dfl/community.py, core/session_settings.py
at HEAD); s and a for the lab [UNVERIFIED].

Idea: every node can compute the same pseudo-random order of the peers for
round r — sort its view of active peers by md5(peer || "-" || r) — so a sample
of s trainers and a aggregators needs no coordinator. Round r:

    trainers  = the first s responsive peers of order(r) (pinged by the previous aggregators)
    each trainer: K local steps from the model it received
    aggregators A = the first a responsive peers of order(r+1); every trainer sends its model to each
    each aggregator: once max(1, ⌊success_fraction · s⌋) models arrived, average them (plain mean);
                     or, `aggregation_timeout` seconds after its first model, average what arrived if
                     that is at least min(3, s) models, else give the round up
    each aggregator sends the average to the first s responsive peers of order(r+1): the next trainers

Defaults [CODE]: the authors' aggregation timeout is 300 s from an
aggregator's first model (`DFLSettings.aggregation_timeout`; earlier versions
declared 5 s and did not use it), the liveness floor of 3 models is
`has_enough_trained_models_for_liveness`, and the success threshold rounds
down; ping timeout 5 s.

Failures (`lab.sync.faults`): peers that stop answering (left, not joined yet)
are skipped when pinged (a ping to a dead peer costs the ping timeout on the
simulated clock, once per phase) and leave everyone's view; a peer that
(re)joins is back in everyone's view the round after (joins apply at round
boundaries). A node picked for the round — trainer or aggregator — may crash
before sending (`fail_prob`): a crashed trainer never delivers, a crashed
aggregator never forwards its average. With a aggregators the round survives
as long as one of them does (a−1 crashes are masked). A round no aggregator
completes is *lost*: the next sample waits out the aggregation timeout and
starts from the last average it holds [RECON: the authors' code has no
recovery from a silent loss of every aggregator (only from one that leaves
gracefully and says so); with aggregation_timeout=0 the lab lets such a run
stall, as that code would]. `round_deadline`, where set, also bounds an
aggregator's wait: at that deadline (in multiples of the round's nominal
compute time) it averages whatever arrived, even one model [RECON: the lab's
bound, not the authors'].

Sent per round: trainers → aggregators s·a models, aggregators → next
trainers a·s models (2·a·s·4d bytes, peer links; nothing between a client and
a server), plus 8-byte pings. Knobs: `client_fraction` (s = max(1, round(C·N))),
`modest_aggregators` (a), `success_fraction`, `aggregation_timeout`, `round_deadline`,
`local_steps`/`local_epochs`, `lr`, `momentum`, the faults. With s = N, a = 1
and no failures MoDeST equals FedAvg with full participation on equal shards
(FedAvg weighs by n_i, MoDeST does not). Metrics columns beside the fault
record: `aggregators`, `aggregators_failed`.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from lab.knobs import Knob, bad
from lab.sync.faults import RoundPlan
from lab.sync.federated import LOCAL_SGD, Federated
from lab.technique import RoundResult, TrainContext
from lab.topology import LINK_CLASSES, Cost

PING_BYTES = 8  # a round number
PING_TIMEOUT_S = 5.0  # the code's ping timeout
AGGREGATION_TIMEOUT_S = 300.0  # the code's aggregation timeout (DFLSettings.aggregation_timeout)
LIVENESS_MODELS = 3  # models an aggregator needs to average at its timeout (the code's liveness check)


def order(peers, round_index: int) -> list[int]:
    """Every node's shared order of `peers` for one round: by md5(peer || '-' || round)."""
    return sorted(peers, key=lambda p: hashlib.md5(f"{p}-{round_index}".encode()).hexdigest())


class MoDeST(Federated):
    reads = LOCAL_SGD
    name = "modest"
    label = "MoDeST"
    label_knobs = ("modest_aggregators",)
    knobs = {
        "modest_aggregators": Knob(1, "aggregators a per round (1..num_workers)", low=1, high=100_000),
        "success_fraction": Knob(1.0, "fraction of the sample's models an aggregator waits for", low=0.0,
                                 low_open=True, high=1.0),
        "aggregation_timeout": Knob(AGGREGATION_TIMEOUT_S, "simulated seconds an aggregator waits after its first "
                                    "model before averaging what arrived (at least 3 models); the authors' default "
                                    "300 s; 0 = wait for success_fraction of the sample", low=0.0, high=1e9,
                                    probe_with={"clients_stop": 1, "stop_round": 0}),
    }

    @classmethod
    def check(cls, c) -> None:
        super().check(c)
        if c.modest_aggregators > c.num_workers:
            bad("modest_aggregators", c.modest_aggregators, f"an integer in [1, num_workers={c.num_workers}]")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        n = ctx.collective.world_size
        self.view = set(self.faults.members(0))  # peers every node believes active (late joiners come later)
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

    def aggregation(self, delivering: list[int], finish: dict[int, float], nominal: float, deadline: float):
        """What every aggregator does with the models of `delivering` (ascending arrival) arriving at
        `finish[t]`: (models averaged (ascending ids; [] = the round is given up), when it is decided in
        seconds — inf: it waits forever). `deadline`: round_deadline in seconds (inf: none)."""
        c = self.config
        need = max(1, math.floor(c.success_fraction * self.s))
        timeout = c.aggregation_timeout
        if not delivering:
            cut = min(nominal + timeout if timeout else math.inf, deadline)
            return [], cut
        first = finish[delivering[0]]
        cut = min(first + timeout if timeout else math.inf, deadline)
        if len(delivering) >= need and finish[delivering[need - 1]] <= cut:
            return sorted(delivering[:need]), finish[delivering[need - 1]]
        if cut == math.inf:
            return [], math.inf
        arrived = [t for t in delivering if finish[t] <= cut]
        floor = 1 if cut == deadline else min(LIVENESS_MODELS, self.s)  # a deadline takes what it has
        return (sorted(arrived) if len(arrived) >= floor else []), cut

    def round(self, ctx: TrainContext) -> RoundResult:
        if self.stalled is not None:  # still waiting for a model that will never come
            return self.stall(ctx)
        c, r, n = self.config, ctx.rounds, ctx.collective.world_size
        ctx.ledger.step = ctx.step
        if r > 0:  # peers that (re)joined during the last round are in everyone's view now
            self.view |= {p for p in range(n) if self.faults.alive(p, r - 1)}
        trainers = self.trainers
        steps = {t: self.local_steps(t) for t in trainers}
        finish, dropped, failed, deadline = self.faults.finish_times(trainers, round_index=r, steps=steps,
                                                                     step_seconds=ctx.step_compute_seconds)
        delivering = sorted((t for t in finish if finish[t] < math.inf), key=lambda t: (finish[t], t))
        out = self.local_sgd(ctx, delivering, self.global_row)  # start: the model they received (all equal)
        aggregators = self._ping(ctx, delivering, c.modest_aggregators, r + 1, alive_at=r)
        crashing = self.faults.fails(r)
        working = [a for a in aggregators if not crashing[a]]  # aggregators that forward their average
        nominal = max((steps[t] * ctx.step_compute_seconds for t in trainers), default=0.0)
        used, wait = self.aggregation(delivering, finish, nominal, deadline)
        if wait == math.inf:  # no timeout: waits forever for models that will never come
            return self.stall(ctx, RoundPlan(r, trainers, [], dropped=dropped, failed=failed, stalled=True))
        completed = bool(used and working)
        plan = RoundPlan(r, trainers, used if completed else [], dropped=dropped, failed=failed,
                         silent=[t for t in trainers if finish.get(t) == math.inf and t not in failed],
                         late=[t for t in delivering if t not in used], seconds=wait)
        if not completed and not c.aggregation_timeout and not c.round_deadline:  # lost, and nobody restarts
            return self.stall(ctx, RoundPlan(r, trainers, [], dropped=dropped, failed=failed, stalled=True))
        x = ctx.cluster.params.detach()
        model_bytes = x[0].numel() * x.element_size()
        if used and aggregators:
            # trainers -> aggregators: every aggregator averages the models that arrived in time
            w1 = torch.eye(n)
            for a in aggregators:
                w1[a] = 0.0
                w1[a, used] = 1.0 / len(used)
            x = ctx.collective.mix(x, weights=w1, tag="model_to_aggregators")
            if completed:  # the observer's copy of the average (evaluation only, not sent)
                self.global_row = ctx.collective.all_gather(x, record=False)[0][working[0]].clone()
        unused = [(t, a) for t in delivering if t not in used for a in aggregators if t != a]
        if unused:  # sent, but after the aggregator moved on (or to one that gave the round up)
            ctx.collective.record_peers(unused, model_bytes, op="mix", tag="model_to_aggregators")
        # the next trainers: pinged by the aggregators that forward (after a lost round: the restarting sample)
        nxt = self._ping(ctx, working if completed else aggregators, self.s, r + 1, alive_at=r)
        if completed:  # aggregators -> next trainers (identical copies; a receiver keeps the first)
            w2 = torch.eye(n)
            for t in nxt:
                w2[t] = 0.0
                w2[t, working[0]] = 1.0
            x = ctx.collective.mix(x, weights=w2, tag="model_to_trainers")
            copies = [(a, t) for a in working[1:] for t in nxt if a != t]
            if copies:
                ctx.collective.record_peers(copies, model_bytes, op="mix", tag="model_to_trainers")
        ctx.cluster.set_rows(x)
        ctx.cluster.set_rows(self.global_row, [ctx.cluster.local_index(t) for t in nxt if t in ctx.cluster.ranks])
        self.trainers = nxt
        ctx.step += max(steps.values(), default=0)
        ctx.compute_seconds += plan.seconds
        loss = self.mean_loss(ctx, out, used) if completed else float("nan")
        return RoundResult(loss, {**plan.extras(), "aggregators": ",".join(map(str, aggregators)),
                                  "aggregators_failed": len(aggregators) - len(working)})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "view": sorted(self.view), "trainers": list(self.trainers)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.view, self.trainers = set(state["view"]), list(state["trainers"])
