"""Hecate FSSDP on a small MoE layer (spec §A6): equals a single-device MoE, evens out the straggler of
expert parallelism, and gathers fewer bytes than dense FSDP."""
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sharding.hecate import FSSDP, ExpertParallel, MoE, memory_per_rank, place
from lab.topology import preset

P, E, T, H = 4, 8, 32, 16


def coll():
    return SimulatedCollective(world_size=P, ledger=Ledger(preset("nvlink_node", P)))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, T, H, generator=g), torch.randn(P, T, H, generator=g)


@pytest.mark.parametrize("top_k,remat", [(2, True), (1, False)])
def test_fssdp_equals_a_single_device_moe(top_k, remat):
    moe = MoE(hidden=H, experts=E, top_k=top_k, skew=0.4)
    x, dy = batch()
    ref_y, ref_g = moe.reference(x.reshape(-1, H), dy.reshape(-1, H))
    layer = FSSDP(moe, coll(), slots=2, rematerialize=remat)
    y, shards = layer.step(x, dy)  # shards: (P, E, c), rank r owns slice r of every expert
    assert torch.allclose(y.reshape(-1, H), ref_y, atol=1e-5)
    grads = shards.permute(1, 0, 2).reshape(E, -1)[:, :moe.expert_numel]
    assert torch.allclose(grads, ref_g, atol=1e-5)
    ep_y, _ = ExpertParallel(moe, coll()).step(x, dy)
    assert torch.allclose(ep_y.reshape(-1, H), ref_y, atol=1e-5)


def test_skewed_routing_straggler_falls_against_expert_parallelism():
    moe = MoE(hidden=H, experts=E, top_k=2, skew=0.6)
    x, dy = batch(2)
    fs, ep = FSSDP(moe, coll(), slots=2), ExpertParallel(moe, coll())  # EP: 2 experts per rank
    fs.step(x, dy)
    ep.step(x, dy)
    assert fs.max_tokens < ep.max_tokens
    assert fs.max_tokens <= 1.5 * P * T * 2 / P  # within 1.5x of perfect balance


def test_sparse_all_gather_sends_less_than_dense_fsdp():
    moe = MoE(hidden=H, experts=E, top_k=2, skew=0.4)
    c = coll()
    layer = FSSDP(moe, c, slots=2, rematerialize=False)
    layer.step(*batch())
    sparse = c.ledger.table().query("tag == 'sparse_all_gather'").bytes_intra.sum()
    dense = coll()
    dense.all_gather(layer.shards, tag="dense")  # every rank gathers every expert
    assert sparse * E == dense.ledger.table().bytes_intra.sum() * 2  # sum|H_e| = P·slots of P·E replicas
    rs = c.ledger.table().query("tag == 'sparse_reduce_scatter'").bytes_intra.sum()
    assert rs == sparse  # each host returns one slice per owner of each expert it held


def test_placement_gives_every_rank_its_slots_and_hot_experts_more_replicas():
    counts = torch.tensor([40, 20, 10, 5, 5, 0, 0, 0])
    hosts = place(counts, world_size=4, slots=2)
    assert all(len(h) == 2 == len(set(h)) for h in hosts)
    replicas = [sum(e in h for h in hosts) for e in range(8)]
    assert replicas[0] >= replicas[1] >= replicas[2] >= 1 and min(replicas[:5]) >= 1
    with pytest.raises(ValueError, match="slots"):
        place(torch.ones(8), world_size=2, slots=3)


def test_memory_fssdp_holds_ep_states_plus_its_materialized_experts():
    moe = MoE(hidden=H, experts=E)
    fs, ep, fsdp = (memory_per_rank(moe, P, scheme=s, slots=2) for s in ("fssdp", "ep", "fsdp"))
    assert fs["states"] == ep["states"]  # E·S_e/P slices vs E/P whole experts: the same state per rank
    assert fs["materialized"] == 2 * moe.expert_numel * 4 < fsdp["materialized"]
