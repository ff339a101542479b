"""Each simulated collective against a direct computation, and the bytes the Ledger records."""
import pytest
import torch

from lab.comm import Ledger, Packet, SimulatedCollective
from lab.topology import preset

P = 4


@pytest.fixture
def coll():
    return SimulatedCollective(world_size=P, ledger=Ledger(preset("nvlink_node", P)))


def x(*shape, seed=0):
    return torch.randn(P, *shape, generator=torch.Generator().manual_seed(seed))


def test_all_reduce_sum_and_mean_equal_direct_sum(coll):
    t = x(5, 3)
    assert torch.allclose(coll.all_reduce(t, op="sum"), t.sum(0).expand_as(t), atol=1e-6)
    assert torch.allclose(coll.all_reduce(t, op="mean"), t.mean(0).expand_as(t), atol=1e-6)


def test_all_reduce_adds_in_ascending_rank_order(coll):
    t = torch.tensor([[1e8], [1.0], [-1e8], [1.0]])
    expected = ((torch.tensor(1e8) + 1.0) + -1e8) + 1.0  # fp32, rank 0 first
    assert coll.all_reduce(t, op="sum")[0, 0] == expected


def test_reduce_scatter_gives_each_rank_its_chunk(coll):
    t = x(8, 2)
    out = coll.reduce_scatter(t, op="sum")  # (P, 2, 2)
    full = t.sum(0)
    for r in range(P):
        assert torch.allclose(out[r], full[2 * r: 2 * r + 2], atol=1e-6)


def test_all_gather_returns_every_row_to_every_rank(coll):
    t = x(3)
    out = coll.all_gather(t)
    for r in range(P):
        assert torch.equal(out[r], t)


def test_all_gather_of_a_packet_gathers_each_tensor(coll):
    pkt = Packet({"v": x(2), "i": torch.arange(P * 2, dtype=torch.int32).view(P, 2)})
    out = coll.all_gather(pkt)
    assert torch.equal(out.tensors["i"][3], pkt.tensors["i"])
    assert coll.ledger.entries[-1].payload_bytes == 2 * 4 + 2 * 4


def test_broadcast_copies_the_source_row(coll):
    t = x(4)
    assert torch.equal(coll.broadcast(t, src=2), t[2].expand_as(t))


def test_all_to_all_transposes_chunks(coll):
    t = x(P, 3)
    out = coll.all_to_all(t)
    for i in range(P):
        for j in range(P):
            assert torch.equal(out[j, i], t[i, j])


def test_shift_sends_each_row_to_the_next_rank(coll):
    t = x(2)
    out = coll.shift(t, offset=1)
    for r in range(P):
        assert torch.equal(out[(r + 1) % P], t[r])


def test_server_reduce_is_the_weighted_sum_of_the_sampled_rows(coll):
    t = x(6)
    w = torch.tensor([0.0, 0.25, 0.0, 0.75])
    assert torch.allclose(coll.server_reduce(t, weights=w, ranks=[1, 3]), 0.25 * t[1] + 0.75 * t[3], atol=1e-6)
    # no separate server on one node: rank 0 hosts it, so the uploads travel on intra-node links
    assert coll.ledger.entries[-1].bytes["intra"].tolist() == [0, 24, 0, 24]


def test_star_uplink_and_downlink_count_only_the_sampled_clients():
    star = SimulatedCollective(world_size=P, ledger=Ledger(preset("phones", P)))
    t = x(6)
    star.server_reduce(t, weights=torch.full((P,), 0.5), ranks=[3, 1])
    star.server_broadcast(t[0], ranks=[1, 3])
    up, down = star.ledger.entries
    assert up.bytes["uplink"].tolist() == [0, 24, 0, 24] and down.bytes["downlink"].tolist() == [0, 24, 0, 24]


def test_mix_applies_the_mixing_matrix(coll):
    t = x(3)
    w = torch.full((P, P), 1.0 / P)
    assert torch.allclose(coll.mix(t, weights=w), t.mean(0).expand_as(t), atol=1e-6)


def test_ring_all_reduce_bytes_are_2_p_minus_1_over_p_of_the_payload(coll):
    t = torch.zeros(P, 1000)
    coll.all_reduce(t)
    e = coll.ledger.entries[-1]
    assert e.algorithm == "ring"
    assert e.bytes["intra"].tolist() == [2 * (P - 1) * 4000 // P] * P


def test_unrecorded_calls_leave_the_ledger_alone(coll):
    coll.all_reduce(x(3), record=False)
    assert coll.ledger.entries == []


def test_wrong_row_count_is_a_clear_error(coll):
    with pytest.raises(ValueError, match="world_size=4"):
        coll.all_reduce(torch.zeros(3, 2))
