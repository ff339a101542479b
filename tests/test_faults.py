"""The client-fault model: dropouts, stragglers and a deadline, clients that stop, and the participation record."""
import math

import pytest
import torch

from lab.experiment import ExperimentConfig, run
from lab.sync.faults import ClientFaults, participants_of

STEPS = {c: 10 for c in range(10)}


def test_dropouts_are_not_waited_for_and_the_draws_depend_only_on_seed_and_round():
    f = ClientFaults(num_clients=10, seed=3, dropout_prob=0.5)
    plan = f.plan(list(range(10)), round_index=4, steps=STEPS, step_seconds=1.0)
    assert plan.dropped and set(plan.dropped) | set(plan.participants) == set(range(10))
    assert plan.seconds == 10.0 and not plan.stalled
    again = ClientFaults(num_clients=10, seed=3, dropout_prob=0.5).plan(list(range(10)), round_index=4, steps=STEPS,
                                                                         step_seconds=1.0)
    assert again.participants == plan.participants
    other = f.plan(list(range(10)), round_index=5, steps=STEPS, step_seconds=1.0)
    assert other.participants != plan.participants


def test_stragglers_slow_the_round_without_a_deadline_and_miss_it_with_one():
    slow = ClientFaults(num_clients=10, seed=0, straggler_prob=0.3, straggler_slowdown=4.0)
    plan = slow.plan(list(range(10)), round_index=0, steps=STEPS, step_seconds=1.0)
    assert len(plan.participants) == 10 and plan.seconds == 40.0  # waits for the slowest straggler
    strict = ClientFaults(num_clients=10, seed=0, straggler_prob=0.3, straggler_slowdown=4.0, deadline=2.0)
    plan2 = strict.plan(list(range(10)), round_index=0, steps=STEPS, step_seconds=1.0)
    assert plan2.late and set(plan2.late) == set(range(10)) - set(plan2.participants)
    assert plan2.seconds == 20.0  # the server waited until the deadline, then went on


def test_a_stopped_client_stalls_a_server_without_deadline_but_not_one_with_a_deadline():
    f = ClientFaults(num_clients=10, seed=0, num_stop=3, stop_round=2)
    dead = sorted(f.stopping)
    assert len(dead) == 3
    assert not f.plan(dead, round_index=1, steps=STEPS, step_seconds=1.0).stalled  # not yet stopped
    plan = f.plan(list(range(10)), round_index=2, steps=STEPS, step_seconds=1.0)
    assert plan.stalled and plan.silent == dead and not plan.completed
    g = ClientFaults(num_clients=10, seed=0, num_stop=3, stop_round=2, deadline=1.5)
    plan = g.plan(list(range(10)), round_index=2, steps=STEPS, step_seconds=1.0)
    assert not plan.stalled and plan.participants == sorted(set(range(10)) - set(dead)) and plan.seconds == 15.0


def test_fedavg_under_dropout_records_who_took_part_and_counts_only_their_uploads():
    r = run(ExperimentConfig(technique="fedavg", num_workers=10, rounds=4, client_fraction=0.6, dropout_prob=0.3,
                             local_steps=3, topology="phones"), save=False, progress=False)
    d = r.model.numel()
    m = r.metrics
    took_part = [participants_of(row) for _, row in m.iterrows()]
    sampled = [[int(c) for c in s.split(",")] for s in m.sampled]
    assert all(set(p) <= set(s) and len(s) == 6 for p, s in zip(took_part, sampled))
    assert sum(map(len, took_part)) < sum(map(len, sampled))  # someone dropped
    assert m.bytes_uplink.iloc[-1] == 4 * d * sum(map(len, took_part))
    assert m.bytes_downlink.iloc[-1] == 4 * d * sum(map(len, sampled))
    assert (m.num_participants == [len(p) for p in took_part]).all() and m.round_completed.all()


def test_scaffold_keeps_c_the_mean_of_all_client_control_variates_under_dropout():
    from lab.experiment import build_context
    from lab.sync.scaffold import Scaffold

    cfg = ExperimentConfig(technique="scaffold", num_workers=6, rounds=3, client_fraction=0.5, dropout_prob=0.4,
                           partition="dirichlet", local_steps=4)
    ctx, _ = build_context(cfg)
    tech = Scaffold(cfg)
    tech.setup(ctx)
    seen = set()
    for _ in range(3):
        out = tech.round(ctx)
        ctx.rounds += 1
        seen |= set(participants_of(out.extras))
    assert torch.allclose(tech.c, tech.c_local.mean(0), atol=1e-6)
    untouched = [i for i in range(6) if i not in seen]
    assert all(tech.c_local[i].abs().max() == 0 for i in untouched)


def test_a_stalled_run_completes_no_round_after_the_failure():
    r = run(ExperimentConfig(technique="fedprox", num_workers=8, rounds=5, client_fraction=1.0, clients_stop=1,
                             stop_round=2, local_steps=2), save=False, progress=False)
    assert r.metrics.round_completed.tolist() == [True, True, False, False, False]
    assert r.status == "finished" and math.isnan(r.metrics.loss.iloc[-1])
    assert r.metrics.bytes.iloc[2] == r.metrics.bytes.iloc[-1]  # nothing is sent while the server waits


def test_in_round_failures_are_silent_transient_and_drawn_apart_from_dropouts():
    f = ClientFaults(num_clients=10, seed=1, fail_prob=0.3, dropout_prob=0.2)
    plan = f.plan(list(range(10)), round_index=3, steps=STEPS, step_seconds=1.0)
    assert plan.failed and not set(plan.failed) & set(plan.participants) and not set(plan.failed) & set(plan.dropped)
    assert plan.stalled  # no deadline: the server waits for a client that crashed without a word
    assert torch.equal(f.draws(3)[0], ClientFaults(num_clients=10, seed=1, dropout_prob=0.2).draws(3)[0])
    later = f.plan(list(range(10)), round_index=4, steps=STEPS, step_seconds=1.0)
    assert later.failed != plan.failed and set(plan.failed) & set(later.participants)  # back the next round
    g = ClientFaults(num_clients=10, seed=1, fail_prob=0.3, dropout_prob=0.2, deadline=1.5)
    timed = g.plan(list(range(10)), round_index=3, steps=STEPS, step_seconds=1.0)
    assert not timed.stalled and timed.failed == plan.failed and timed.seconds == 15.0
    rates = torch.stack([f.fails(r) for r in range(400)]).double().mean()
    assert abs(float(rates) - 0.3) < 0.02  # 4000 draws: 3 standard errors is 0.022


def test_clients_that_leave_come_back_and_late_joiners_are_not_sampled_before_they_join():
    f = ClientFaults(num_clients=10, seed=0, num_stop=3, stop_round=2, return_round=5, num_join=2, join_round=3)
    away = sorted(f.stopping)
    assert [all(f.alive(c, r) for c in away) for r in range(7)] == [True, True, False, False, False, True, True]
    assert not f.joining & f.stopping and f.members(2) == sorted(set(range(10)) - f.joining)
    r = run(ExperimentConfig(technique="fedavg", num_workers=10, rounds=7, local_steps=2, clients_stop=3, stop_round=2,
                             return_round=5, clients_join=2, join_round=3, round_deadline=1.5, topology="phones"),
            save=False, progress=False)
    sampled = [{int(c) for c in s.split(",")} for s in r.metrics.sampled]
    took_part = [set(participants_of(row)) for _, row in r.metrics.iterrows()]
    joiners = set(range(10)) - sampled[0]
    assert len(joiners) == 2 and all(not joiners & s for s in sampled[:3]) and all(joiners <= s for s in sampled[3:])
    left = set(range(10)) - took_part[3] - joiners
    assert len(left) == 3 and all(not left & p for p in took_part[2:5]) and left <= took_part[5]
    assert r.metrics.round_completed.all()


@pytest.mark.parametrize("bad,named", [({"dropout_prob": 1.0}, "dropout_prob=1.0"),
                                       ({"fail_prob": 1.0}, "fail_prob=1.0"),
                                       ({"clients_stop": 2, "stop_round": 3, "return_round": 3}, "return_round=3"),
                                       ({"clients_stop": 4, "clients_join": 4}, "clients_join=4"),
                                       ({"round_deadline": 0.5}, "round_deadline=0.5"),
                                       ({"clients_stop": 9}, "clients_stop=9"),
                                       ({"straggler_slowdown": 0.5}, "straggler_slowdown=0.5")])
def test_bad_fault_settings_are_refused(bad, named):
    with pytest.raises(ValueError, match=named):
        ExperimentConfig(technique="fedavg", num_workers=8, **bad)
