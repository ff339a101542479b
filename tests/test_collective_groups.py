"""Collectives inside sub-groups (shard / replica / hpZ groups): results per group, one Ledger entry with
each group's bytes and the slowest group's time; simulated and on 4 gloo processes."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab.comm import Ledger, Packet, SimulatedCollective
from lab.comm.collective import group_cost
from lab.launch import free_port
from lab.topology import preset

P = 4
SHARD = [[0, 1], [2, 3]]  # contiguous pairs
REPLICA = [[0, 2], [1, 3]]  # stride 2


def coll(topology="nvlink_node", p=P):
    return SimulatedCollective(world_size=p, ledger=Ledger(preset(topology, p)))


def x(*shape, seed=0):
    return torch.randn(P, *shape, generator=torch.Generator().manual_seed(seed))


def test_grouped_all_reduce_reduces_inside_each_group():
    c, t = coll(), x(5)
    out = c.all_reduce(t, op="sum", groups=REPLICA)
    for g in REPLICA:
        for r in g:
            assert torch.allclose(out[r], t[g].sum(0), atol=1e-6)
    assert torch.allclose(c.all_reduce(t, op="mean", groups=SHARD)[3], t[2:].mean(0), atol=1e-6)


def test_grouped_reduce_scatter_gives_each_position_its_chunk():
    c, t = coll(), x(6)
    out = c.reduce_scatter(t, op="sum", groups=REPLICA)  # (P, 3)
    for g in REPLICA:
        full = t[g].sum(0)
        for pos, r in enumerate(g):
            assert torch.allclose(out[r], full[3 * pos: 3 * pos + 3], atol=1e-6)


def test_grouped_all_gather_and_all_to_all():
    c, t = coll(), x(3)
    out = c.all_gather(t, groups=SHARD)  # (P, 2, 3)
    assert torch.equal(out[1], t[[0, 1]]) and torch.equal(out[2], t[[2, 3]])
    a = x(2, 3)
    out = c.all_to_all(a, groups=REPLICA)
    for g in REPLICA:
        for i, src in enumerate(g):
            for j, dst in enumerate(g):
                assert torch.equal(out[dst, i], a[src, j])


def test_a_packet_goes_through_grouped_all_gather_and_all_to_all():
    c = coll()
    pkt = Packet({"q": torch.arange(P * 2 * 3, dtype=torch.uint8).view(P, 2, 3), "s": x(2, 1)})
    out = c.all_to_all(pkt, groups=SHARD)
    assert torch.equal(out.tensors["q"][1, 0], pkt.tensors["q"][0, 1])
    assert c.ledger.entries[-1].payload_bytes == 2 * 3 + 2 * 4


def test_one_group_of_everyone_is_the_plain_collective():
    a, b = coll(), coll()
    t = x(8)
    assert torch.equal(a.reduce_scatter(t, groups=[[0, 1, 2, 3]]), b.reduce_scatter(t))
    assert a.ledger.table().equals(b.ledger.table())


def test_ledger_entry_has_each_groups_bytes_and_link_classes():
    c = coll("multinode_4x8", 8)  # 4 nodes of 2 ranks
    t = torch.zeros(8, 1000)
    c.all_reduce(t, groups=[[0, 1], [2, 3], [4, 5], [6, 7]])  # node groups: intra only
    e = c.ledger.entries[-1]
    assert e.bytes["inter"].sum() == 0 and e.bytes["intra"].tolist() == [4000] * 8  # 2(G-1)/G·M, G=2
    c.all_reduce(t, groups=[[0, 2, 4, 6], [1, 3, 5, 7]])  # replica groups: across nodes
    e = c.ledger.entries[-1]
    assert e.bytes["intra"].sum() == 0 and e.bytes["inter"].tolist() == [6000] * 8  # 2·3/4·4000
    assert len(c.ledger.entries) == 2 and "[2x4]" in e.algorithm


def test_time_is_the_slowest_group():
    topo = preset("multinode_4x8", 8)
    groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
    cost = group_cost(topo, "all_gather", 4000, groups)
    assert cost.seconds == max(topo.cost("all_gather", 4000, ranks=g).seconds for g in groups)
    mixed = group_cost(topo, "all_gather", 4000, [[0, 1, 2, 3], [4, 5, 6, 7]])  # both groups span 2 nodes
    assert mixed.seconds > cost.seconds


def test_bad_groups_are_clear_errors():
    c = coll()
    with pytest.raises(ValueError, match="exactly one group"):
        c.all_reduce(x(2), groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="same size"):
        c.all_reduce(x(2), groups=[[0], [1, 2, 3]])
    with pytest.raises(ValueError, match="group size 2"):
        c.reduce_scatter(x(3), groups=SHARD)


# ---- the same on 4 gloo processes -------------------------------------------------------------------
def _ops(c):
    """Every grouped op on rank-stacked rows of the ranks `c` holds; returns the results."""
    t = torch.stack([torch.randn(6, generator=torch.Generator().manual_seed(10 + r)) for r in c.ranks])
    a = torch.stack([torch.randn(2, 3, generator=torch.Generator().manual_seed(20 + r)) for r in c.ranks])
    out = {"ar": c.all_reduce(t, op="sum", groups=REPLICA), "rs": c.reduce_scatter(t, groups=REPLICA),
           "ag": c.all_gather(t, groups=SHARD), "a2a": c.all_to_all(a, groups=SHARD),
           "ar2": c.all_reduce(t, groups=SHARD)}
    return {k: v.clone() for k, v in out.items()}


def _worker(rank, port, out_dir):
    from lab.comm.distributed import DistributedCollective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=P, init_method=f"tcp://127.0.0.1:{port}")
    try:
        c = DistributedCollective(ledger=Ledger(preset("nvlink_node", P)))
        torch.save({"out": _ops(c), "ledger": c.ledger.table()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.gloo
def test_grouped_collectives_on_gloo_equal_simulated(tmp_path):
    sim = coll()
    expected = _ops(sim)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=P, join=True)
    for r in range(P):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=False)
        for k, v in expected.items():
            assert torch.allclose(got["out"][k][0], v[r], atol=1e-6), k
        assert got["ledger"].equals(sim.ledger.table())
