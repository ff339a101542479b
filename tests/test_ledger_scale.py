"""The Ledger's memory grows linearly with the number of ranks (issue 10, item 6), and its sparse tables say
what the dense ones said: per-rank bytes, the rank-to-rank traffic, and a checkpoint round trip.

Memory is counted from the Ledger's own arrays (`Ledger.memory_bytes`), not timed: ten times the ranks must
cost about ten times the bytes (bounds 5x..20x), and far less than the (P+1)² float64 matrix it replaced.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.checkpoint import pack, unpack
from lab.comm import Ledger, SimulatedCollective
from lab.comm.collective import group_cost
from lab.topology import LINK_CLASSES, preset


def _steps(ledger: Ledger, steps: int, *, payload: int = 84) -> None:
    """A DDP run's calls: one gradient all-reduce per step, a federated upload and download, and a ring shift."""
    p = ledger.topology.num_ranks
    for s in range(steps):
        ledger.step = s
        ledger.record("all_reduce", payload, tag="grads")
        ledger.record("server_gather", payload, tag="up", ranks=list(range(0, p, 2)))
        ledger.record("server_broadcast", payload, tag="down", ranks=list(range(0, p, 2)))
        ledger.record("shift", payload, tag="ring", cost=ledger.topology.peer_cost(
            [(r, (r + 1) % p) for r in range(p)], payload, "shift"))


@pytest.mark.parametrize("name", ["phones", "ethernet"])
def test_ledger_memory_is_linear_in_the_number_of_ranks(name):
    sizes = {}
    for p in (1_000, 10_000):
        ledger = Ledger(preset(name, p))
        _steps(ledger, 20)
        assert len(ledger.entries) == 80
        sizes[p] = ledger.memory_bytes()
        assert sizes[p] <= Ledger.estimate_bytes(p)  # what lab.budget counts for it holds
    assert 5 <= sizes[10_000] / sizes[1_000] <= 20, sizes  # ~10x the ranks: ~10x the bytes
    assert sizes[10_000] < 8 * 10_001 ** 2 / 100  # under 1% of the (P+1)² float64 matrix it replaced


def test_calls_that_repeat_share_their_rows():
    ledger = Ledger(preset("ethernet", 64))
    _steps(ledger, 1)
    one = ledger.memory_bytes()
    _steps(ledger, 50)
    assert ledger.memory_bytes() == one  # the same calls again add entries, not rows
    a, b = ledger.entries[0], ledger.entries[4]
    assert a.bytes["inter"] is b.bytes["inter"] and not a.bytes["inter"].flags.writeable
    assert a.bytes["uplink"] is a.bytes["downlink"]  # the unused classes share the zero row


def test_sparse_traffic_and_rows_equal_the_dense_accumulation():
    """Against the dense (P+1)² sum of every call's traffic and (P,) rows, exactly."""
    t = preset("multinode_2x4", 8)
    coll = SimulatedCollective(world_size=8, ledger=Ledger(t))
    x = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 16)
    dense = np.zeros((9, 9))
    per_rank = {c: np.zeros(8, dtype=np.int64) for c in LINK_CLASSES}
    for call in (lambda: coll.all_reduce(x), lambda: coll.reduce_scatter(x), lambda: coll.all_gather(x),
                 lambda: coll.broadcast(x, src=3), lambda: coll.shift(x, offset=3),
                 lambda: coll.all_reduce(x, groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
                 lambda: coll.send_recv(x, pairs=[(0, 5), (5, 2)]),
                 lambda: coll.server_reduce(x, weights=torch.full((8,), 0.125), ranks=[1, 2, 7])):
        n = len(coll.ledger.entries)
        call()
        for e in coll.ledger.entries[n:]:
            for c in LINK_CLASSES:
                per_rank[c] += e.bytes[c]
    # the costs again, dense, as the old Ledger summed them
    for e, (op, kw) in zip(coll.ledger.entries, [("all_reduce", {}), ("reduce_scatter", {}), ("all_gather", {}),
                                                  ("broadcast", {})]):
        dense += t.cost(op, e.payload_bytes, **kw).traffic.toarray()
    dense += t.peer_cost([(r, (r + 3) % 8) for r in range(8)], 64, "shift").traffic.toarray()
    dense += group_cost(t, "all_reduce", 64, [[0, 1, 2, 3], [4, 5, 6, 7]]).traffic.toarray()
    dense += t.peer_cost([(0, 5), (5, 2)], 64, "send_recv").traffic.toarray()
    dense += t.cost("server_gather", 64, ranks=[1, 2, 7]).traffic.toarray()
    assert np.array_equal(coll.ledger.traffic_matrix(), dense)
    assert np.array_equal(np.asarray(coll.ledger.traffic), dense)
    assert coll.ledger.traffic_matrix(4).shape == (5, 5)
    assert np.array_equal(coll.ledger.traffic_matrix(4)[:4, :4], dense[:4, :4])
    for c in LINK_CLASSES:
        assert np.array_equal(coll.ledger._totals[c], per_rank[c]), c
    assert coll.ledger.total_bytes == sum(int(v.sum()) for v in per_rank.values())


def test_state_dict_round_trips_through_a_checkpoint():
    t = preset("phones", 10)
    ledger = Ledger(t)
    _steps(ledger, 3)
    state = unpack(pack(ledger.state_dict()))  # what lab.checkpoint writes and reads back
    again = Ledger(t)
    again.load_state_dict(state)
    assert again.table().equals(ledger.table())
    assert again.traffic == ledger.traffic and again.step == ledger.step and again.seconds == ledger.seconds
    assert all(np.array_equal(again._totals[c], ledger._totals[c]) for c in LINK_CLASSES)
    assert again.entries[0].bytes["uplink"] is again.entries[4].bytes["uplink"]  # rows shared again
    _steps(again, 1)
    _steps(ledger, 1)
    assert again.table().equals(ledger.table()) and again.traffic == ledger.traffic


@pytest.mark.slow
def test_the_benchmark_prints_the_peak_and_the_ratio_to_the_old_matrix():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "ledger_scale.py"), "--sizes", "100", "1000"],
                         capture_output=True, text=True, cwd=root, timeout=600, check=True).stdout
    lines = [line.split() for line in out.splitlines() if line.strip().split()[:1] in (["100"], ["1000"])]
    assert [row[0] for row in lines] == ["100", "1000"] and all(row[1] == "finished" for row in lines), out
    assert "Ledger bytes grow" in out and "within 4 GB" in out, out
