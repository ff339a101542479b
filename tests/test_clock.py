"""The simulated clock: serial sums, overlap, stragglers, and DDP's bucketed all-reduce overlapping backward."""
import warnings

import numpy as np
import pytest

from lab.clock import Clock
from lab.experiment import ExperimentConfig, run


def test_without_overlap_the_makespan_is_compute_plus_communication():
    c = Clock(4)
    for _ in range(3):
        c.compute(2.0)
        c.comm(1.0)
    assert c.seconds == pytest.approx(9.0)
    t = c.table()
    assert list(t.columns) == ["rank", "kind", "label", "step", "start", "end"]
    assert (t.groupby("kind").apply(lambda g: (g.end - g.start).sum(), include_groups=False) == [12.0, 24.0]).all()


def test_overlapped_buckets_hide_communication_behind_the_backward_pass():
    c = Clock(2)
    c.compute(3.0)  # forward 1 s, backward 2 s
    for b in range(4):
        with c.overlapping(c.backward_ready((b + 1) / 4)):
            c.comm(0.4)
    c.wait()
    # bucket b is ready at 1 + 0.5 (b + 1); each takes 0.4 s: the last ends at 3.0 + 0.4
    assert c.seconds == pytest.approx(3.4)
    assert c.seconds >= 3.0 and c.seconds >= 4 * 0.4


def test_a_collective_waits_for_the_slowest_rank_but_gossip_only_for_neighbours():
    speed = np.array([1.0, 1.0, 1.0, 0.25])  # rank 3 is 4x slower
    coll, gossip = Clock(4, speed=speed), Clock(4, speed=speed)
    coll.compute(1.0)
    coll.comm(0.5)
    assert coll.compute_free.tolist() == [4.5] * 4
    gossip.compute(1.0)
    gossip.comm(0.5, senders={0: [1], 1: [0], 2: [1], 3: [2]})  # a directed ring 0->1->2->3, plus 1->0
    assert gossip.compute_free.tolist() == [1.5, 1.5, 1.5, 4.5]


def test_compute_is_taken_from_the_training_context_before_each_message():
    c = Clock(2)
    total = {"s": 0.0}
    c.compute_source = lambda: total["s"]
    total["s"] = 1.5
    c.sync()
    c.comm(1.0)
    total["s"] = 2.0
    c.sync()
    assert c.seconds == pytest.approx(3.0) and c.compute_total == pytest.approx(2.0)


GPT = dict(model="gpt", dataset="chars", batch_size=8, optimizer="adamw", lr=3e-3, topology="ethernet")


def quick(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's attention fallback warns
        return run(ExperimentConfig(**kw), save=False, progress=False)


def test_ddp_with_overlap_is_faster_on_the_clock_but_never_faster_than_compute_or_communication_alone():
    base = dict(technique="ddp", num_workers=4, steps=3, eval_every=3, num_buckets=4, **GPT)
    serial, overlapped = quick(**base), quick(**base, overlap=True)
    s, o = serial.metrics.iloc[-1], overlapped.metrics.iloc[-1]
    assert o.sim_seconds < s.sim_seconds
    assert o.sim_seconds >= o.compute_seconds and o.sim_seconds >= o.comm_seconds
    assert len(overlapped.ledger) == 4 * len(serial.ledger)  # one all-reduce per bucket
    assert overlapped.ledger.payload_bytes.sum() == serial.ledger.payload_bytes.sum()
    assert (overlapped.worker_params == serial.worker_params).all()  # bucketing does not change the sums
    tl = overlapped.timeline
    comm, comp = tl[(tl.kind == "comm") & (tl["rank"] == 0)], tl[(tl.kind == "compute") & (tl["rank"] == 0)]
    assert (comm.start.iloc[0] < comp.end.iloc[0])  # the first bucket starts before the backward pass ends


def test_without_overlap_or_stragglers_sim_seconds_is_still_compute_plus_communication():
    r = quick(technique="local_sgd", num_workers=4, steps=16, sync_period=4, eval_every=8)
    m = r.metrics
    assert (m.sim_seconds == m.compute_seconds + m.comm_seconds).all()
    tl = r.timeline
    makespan = tl.end.max()
    assert makespan == pytest.approx(m.sim_seconds.iloc[-1], rel=1e-9)


def test_slow_ranks_make_synchronous_training_wait():
    base = dict(technique="ddp", num_workers=4, steps=5, eval_every=5, topology="ethernet")
    even, slow = quick(**base), quick(**base, slow_ranks=1, straggler_slowdown=3.0)
    e, s = even.metrics.iloc[-1], slow.metrics.iloc[-1]
    assert s.compute_seconds == e.compute_seconds and s.comm_seconds == e.comm_seconds  # columns unchanged
    assert s.sim_seconds == pytest.approx(e.sim_seconds + 2 * e.compute_seconds, rel=1e-9)  # the straggler's extra


def test_overlap_is_a_boolean_option_on_the_command_line():
    from lab.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run", "--overlap", "true"]).overlap is True
    assert not hasattr(p.parse_args(["run"]), "overlap")  # options not given stay out of the config
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--overlap", "maybe"])
    with pytest.raises(ValueError, match="overlap=1"):
        ExperimentConfig(overlap=1)
