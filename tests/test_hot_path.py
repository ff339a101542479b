"""The whole-tensor hot path computes what the per-client definitions say, number for number.

Each vectorized piece is checked against the plain per-client (or per-row) definition it replaced, written out
here: the batch streams, the ascending-order server sum, client sampling, the fault model's plan, the
partitioners; and a FedAvg round trains, in the cluster's own rows, the models a client-by-client loop trains.
Exact comparisons (torch.equal / ==): the rewrites keep the arithmetic order, so the bits are the same.
"""
import math
import random

import pytest
import torch

from lab.batches import RankBatches
from lab.comm.collective import ordered_sum
from lab.data import load_digits, partition
from lab.experiment import ExperimentConfig, build_context
from lab.sync.faults import ClientFaults
from lab.sync.fedavg import FedAvg
from lab.sync.federated import sample_clients


# ---- the definitions, one client (row) at a time ------------------------------------------------------------
class OneByOne:
    """Rank r's stream: fresh randperm of its shard each epoch from a generator seeded (seed, r), batches in order."""

    def __init__(self, shards, batch_size, seed):
        self.shards, self.b = shards, batch_size
        self.gens = {r: torch.Generator().manual_seed(seed * 1_000_003 + r) for r in range(len(shards))}
        self.left = {r: torch.empty(0, dtype=torch.long) for r in range(len(shards))}

    def next(self, r):
        while len(self.left[r]) < self.b:
            s = self.shards[r]
            self.left[r] = torch.cat([self.left[r], s[torch.randperm(len(s), generator=self.gens[r])]])
        out, self.left[r] = self.left[r][: self.b], self.left[r][self.b:]
        return out


def loop_sum(rows, weights=None):
    out = torch.promote_types(rows.dtype, torch.float32)
    acc = torch.zeros(rows.shape[1:], dtype=out if weights is None else torch.promote_types(out, weights.dtype))
    for r in range(rows.shape[0]):
        acc += rows[r] if weights is None else weights[r] * rows[r]
    return acc.to(out)


# ---- tests -----------------------------------------------------------------------------------------------
def test_batch_streams_are_each_ranks_own_whoever_draws_beside_it():
    rng = random.Random(0)
    for trial in range(12):
        n, b = rng.randint(1, 30), rng.randint(1, 9)
        sizes = [rng.randint(1, 25) for _ in range(n)]  # some shards smaller than a batch
        ids = torch.arange(sum(sizes))
        shards = list(ids[torch.randperm(len(ids))].split(sizes))
        lab, ref = RankBatches(ids, ids, shards, batch_size=b, seed=trial, ranks=list(range(n))), \
            OneByOne(shards, b, trial)
        for step in range(25):
            ranks = sorted(rng.sample(range(n), rng.randint(1, n)))
            if step % 7 == 3:  # a checkpoint round trip in between changes nothing
                state = lab.state_dict()
                lab = RankBatches(ids, ids, shards, batch_size=b, seed=trial, ranks=list(range(n)))
                lab.load_state_dict(state)
            x, _ = lab.next(torch.tensor(ranks))
            assert torch.equal(x, torch.stack([ref.next(r) for r in ranks])), (trial, step)


def test_ranks_that_never_draw_hold_no_stream_state():
    ids = torch.arange(1000)
    batches = RankBatches(ids, ids, list(ids.split(10)), batch_size=4, seed=0, ranks=list(range(100)))
    batches.next([3, 50, 99])
    batches.next([50])
    assert sorted(batches.state_dict()["gens"]) == [3, 50, 99]


@pytest.mark.parametrize("shape", [(7,), (3, 5), (1,), ()])
@pytest.mark.parametrize("p", [1, 2, 9, 300])
def test_ordered_sum_is_the_ascending_loop_bit_for_bit(p, shape):
    g = torch.Generator().manual_seed(p)
    x = torch.randn(p, *shape, generator=g)
    for rows in (x, x.double()):
        for w in (None, torch.rand(p, generator=g, dtype=torch.float64), torch.rand(p, generator=g)):
            got, want = ordered_sum(rows, w), loop_sum(rows, w)
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_wide_rows_too():
    x = torch.randn(40, 700)
    w = torch.rand(40, dtype=torch.float64)
    assert torch.equal(ordered_sum(x, w), loop_sum(x, w)) and torch.equal(ordered_sum(x), loop_sum(x))


def test_client_sampling_takes_the_first_members_of_the_seeded_order():
    for seed, r, frac in [(0, 0, 0.1), (3, 7, 0.5), (1, 2, 1.0), (5, 1, 0.001)]:
        order = torch.randperm(200, generator=torch.Generator().manual_seed(seed * 100_003 + r)).tolist()
        pool = set(range(0, 200, 3))
        want = sorted([c for c in order if c in pool][:max(1, round(frac * len(pool)))])
        assert sample_clients(200, frac, seed=seed, round_index=r, population=sorted(pool)) == want
        mask = torch.zeros(200, dtype=torch.bool)
        mask[sorted(pool)] = True
        assert sample_clients(200, frac, seed=seed, round_index=r, population=mask) == want


def _plan_one_by_one(f: ClientFaults, sampled, r, steps, step_s):
    dropped_draw, straggling = f.draws(r)
    failing = f.fails(r)
    nominal = max((steps[c] * step_s for c in sampled), default=0.0)
    deadline = f.deadline * nominal if f.deadline else math.inf
    finish, dropped, failed = {}, [], []
    for c in sampled:
        if not f.alive(c, r):
            finish[c] = math.inf
        elif dropped_draw[c]:
            dropped.append(c)
        elif failing[c]:
            failed.append(c)
            finish[c] = math.inf
        else:
            finish[c] = steps[c] * step_s * (f.straggler_slowdown if straggling[c] else 1.0)
    part = [c for c, t in finish.items() if t < math.inf and t <= deadline]
    late = [c for c, t in finish.items() if deadline < t < math.inf]
    silent = [c for c, t in finish.items() if t == math.inf and c not in failed]
    waited = bool(late or silent or failed)
    seconds = deadline if waited and f.deadline else max((finish[c] for c in part), default=0.0)
    return part, late, silent, dropped, failed, seconds


def test_the_fault_plan_is_the_client_by_client_plan():
    rng = random.Random(1)
    for trial in range(40):
        n = rng.randint(2, 60)
        f = ClientFaults(num_clients=n, seed=trial, dropout_prob=rng.choice([0, 0.3]),
                         straggler_prob=rng.choice([0, 0.4]), straggler_slowdown=rng.choice([2.0, 3.7]),
                         deadline=rng.choice([0.0, 1.5, 3.0]), num_stop=rng.randint(0, n // 3), stop_round=1,
                         return_round=rng.choice([0, 3]), fail_prob=rng.choice([0, 0.2]),
                         num_join=rng.randint(0, max(0, n // 3 - 1)), join_round=2)
        for r in range(5):
            sampled = sorted(rng.sample(range(n), rng.randint(0, n)))
            steps = {c: rng.randint(1, 6) for c in sampled}
            plan = f.plan(sampled, round_index=r, steps=steps, step_seconds=0.37)
            part, late, silent, dropped, failed, seconds = _plan_one_by_one(f, sampled, r, steps, 0.37)
            assert (plan.participants, plan.late, plan.silent, plan.dropped, plan.failed) == \
                (part, late, silent, dropped, failed)
            assert plan.seconds == seconds
            assert f.members(r) == [c for c in range(n) if f.joined(c, r)]


def test_partitions_are_the_per_worker_definitions():
    d = load_digits()
    for n in (1, 7, 64):
        g = torch.Generator().manual_seed(3 * 7919 + 17)
        want = [p.sort().values for p in torch.randperm(d.num_train, generator=g).tensor_split(n)]
        got = partition(d.num_train, d.labels, scheme="iid", num_workers=n, seed=3)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        g = torch.Generator().manual_seed(3 * 7919 + 17)
        order = torch.argsort(d.labels * d.num_train + torch.randperm(d.num_train, generator=g))
        shards = list(order.tensor_split(2 * n))
        deal = torch.randperm(2 * n, generator=g).view(n, 2)
        want = [torch.cat([shards[s] for s in row.tolist()]).sort().values for row in deal]
        got = partition(d.num_train, d.labels, scheme="shards", num_workers=n, seed=3, shards_per_worker=2)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_examples_per_worker_deals_k_distinct_examples_each_sharing_only_beyond_the_data():
    d = load_digits()
    few = partition(d.num_train, d.labels, scheme="iid", num_workers=50, seed=0, examples_per_worker=16)
    assert all(len(p) == 16 for p in few) and len(torch.cat(few).unique()) == 800  # disjoint: 800 <= n
    many = partition(d.num_train, d.labels, scheme="iid", num_workers=3000, seed=0, examples_per_worker=16)
    assert len(many) == 3000 and all(len(p.unique()) == 16 for p in many)
    assert len(torch.cat(many).unique()) > 0.9 * d.num_train  # every pass deals nearly the whole set
    again = partition(d.num_train, d.labels, scheme="iid", num_workers=3000, seed=0, examples_per_worker=16)
    assert all(torch.equal(a, b) for a, b in zip(many, again))
    with pytest.raises(ValueError, match="examples_per_worker"):
        partition(d.num_train, d.labels, scheme="iid", num_workers=3, seed=0, examples_per_worker=10**6)


def test_a_fedavg_round_trains_the_models_a_client_by_client_loop_trains():
    """Ragged local steps (dirichlet shards), momentum and weight decay: the masked, in-place, whole-tensor
    round gives each client the model plain SGD on its own batches gives it."""
    cfg = ExperimentConfig(technique="fedavg", num_workers=6, partition="dirichlet", dirichlet_alpha=0.3,
                           batch_size=8, rounds=1, momentum=0.9, weight_decay=0.01, lr=0.1)
    ctx, _ = build_context(cfg)
    fed = FedAvg(cfg)
    fed.setup(ctx)
    start = fed.global_row.clone()
    shards = ctx.batches.shards
    ref = OneByOne(shards, 8, cfg.seed)
    steps = [fed.local_steps(r) for r in range(6)]
    assert len(set(steps)) > 1  # ragged
    fed.round(ctx)
    for r in range(6):
        y, buf = start.clone(), None
        for t in range(max(steps)):
            idx = ref.next(r)  # every client draws a batch every step of the round
            if t >= steps[r]:
                continue
            _, g = ctx.cluster.loss_and_grad(y.unsqueeze(0), ctx.batches.x[idx].unsqueeze(0),
                                             ctx.batches.y[idx].unsqueeze(0))
            g = g[0] + 0.01 * y
            buf = g.clone() if buf is None else 0.9 * buf + g
            y = y - 0.1 * buf
        assert torch.allclose(ctx.cluster.params[r].detach(), y, atol=1e-6, rtol=1e-5), r
