"""Hecate FSSDP on the MoE block (spec §A6, lab.moe.fssdp): equals a single-device MoE, evens out the straggler of
expert parallelism, and gathers fewer bytes than dense FSDP."""
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.moe.fssdp import FSSDP, memory_per_rank, place
from lab.moe.layer import reference
from lab.moe.model import MoEShape, init_model
from lab.moe.router import route
from lab.moe.strategies import ExpertParallelExperts
from lab.topology import preset

P, E, T, H = 4, 8, 32, 16


def coll():
    return SimulatedCollective(world_size=P, ledger=Ledger(preset("nvlink_node", P)))


def layer_case(top_k, skew, seed=1):
    """One MoE layer: tokens (P, T, H), router weights, every expert, output gradients, a skew bias
    (skew > 0: low experts are hot)."""
    shape = MoEShape("mlp", 4, 2, hidden=H, num_layers=1, ffn=32, num_experts=E, top_k=top_k)
    _, experts = init_model(shape, seed=0)
    g = torch.Generator().manual_seed(seed)
    x, dy = torch.randn(P, T, H, generator=g), torch.randn(P, T, H, generator=g)
    router = torch.randn(H, E, generator=g) / H ** 0.5
    return shape, experts, x, dy, router, -skew * torch.arange(E, dtype=torch.float32)


def run_layer(strategy, shape, experts, x, dy, router, bias):
    """Outputs (P, T, H) and every expert's gradient (E, S_e) of sum(y · dy), router fixed."""
    rows = strategy.init_rows(experts).requires_grad_(True)
    routing = route(x @ router, top_k=shape.top_k, bias=bias)
    y = strategy.layer(rows, 0, x, routing, tag="moe0")
    (grad,) = torch.autograd.grad((y * dy).sum(), rows)
    w1, w2 = strategy.full_experts(grad)[0]
    return y.detach(), torch.cat([w1.flatten(1), w2.flatten(1)], 1)


def single_device(shape, experts, x, dy, router, bias):
    w1, w2 = (w.clone().requires_grad_(True) for w in experts[0])
    y = reference(x, route(x @ router, top_k=shape.top_k, bias=bias), w1, w2)
    g1, g2 = torch.autograd.grad((y * dy).sum(), (w1, w2))
    return y.detach(), torch.cat([g1.flatten(1), g2.flatten(1)], 1)


@pytest.mark.parametrize("top_k,remat", [(2, True), (1, False)])
def test_fssdp_equals_a_single_device_moe(top_k, remat):
    case = layer_case(top_k, 0.4)
    ref_y, ref_g = single_device(*case)
    shape = case[0]
    y, grads = run_layer(FSSDP(coll(), shape, slots=2, rematerialize=remat), *case)
    assert torch.allclose(y, ref_y, atol=1e-5)  # fp32, summation order differs
    assert torch.allclose(grads, ref_g, atol=1e-5)
    ep_y, ep_g = run_layer(ExpertParallelExperts(coll(), shape), *case)
    assert torch.allclose(ep_y, ref_y, atol=1e-5) and torch.allclose(ep_g, ref_g, atol=1e-5)


def test_skewed_routing_straggler_falls_against_expert_parallelism():
    case = layer_case(2, 0.6, seed=2)
    shape = case[0]
    fs, ep = FSSDP(coll(), shape, slots=2), ExpertParallelExperts(coll(), shape)  # EP: 2 experts per rank
    run_layer(fs, *case)
    run_layer(ep, *case)
    fs_max, ep_max = fs.load_history[-1].max(), ep.load_history[-1].max()
    assert fs_max < ep_max
    assert fs_max <= 1.5 * P * T * 2 / P  # within 1.5x of perfect balance


def test_sparse_all_gather_sends_less_than_dense_fsdp():
    case = layer_case(2, 0.4)
    c = coll()
    fs = FSSDP(c, case[0], slots=2, rematerialize=False)
    run_layer(fs, *case)
    sparse = c.ledger.table().query("tag == 'sparse_all_gather'").bytes_intra.sum()
    dense = coll()
    dense.all_gather(fs.shards(fs.init_rows(case[1]), 0).contiguous(), tag="dense")  # every rank gathers every expert
    assert sparse * E == dense.ledger.table().bytes_intra.sum() * 2  # sum|H_e| = P·slots of P·E replicas
    rs = c.ledger.table().query("tag == 'sparse_reduce_scatter'").bytes_intra.sum()
    assert rs == sparse  # each host returns one slice per owner of each expert it held
    remat = coll()
    run_layer(FSSDP(remat, case[0], slots=2, rematerialize=True), *case)
    assert remat.ledger.table().query("tag == 'sparse_all_gather_bwd'").bytes_intra.sum() == sparse


def test_placement_gives_every_rank_its_slots_and_hot_experts_more_replicas():
    counts = torch.tensor([40, 20, 10, 5, 5, 0, 0, 0])
    hosts = place(counts, world_size=4, slots=2)
    assert all(len(h) == 2 == len(set(h)) for h in hosts)
    replicas = [sum(e in h for h in hosts) for e in range(8)]
    assert replicas[0] >= replicas[1] >= replicas[2] >= 1 and min(replicas[:5]) >= 1
    with pytest.raises(ValueError, match="slots"):
        place(torch.ones(8), world_size=2, slots=3)


def test_memory_fssdp_holds_ep_states_plus_its_materialized_experts():
    kw = dict(expert_numel=2 * H * 32, num_experts=E, world_size=P, slots=2)
    fs, ep, fsdp = (memory_per_rank(scheme=s, **kw) for s in ("fssdp", "ep", "fsdp"))
    assert fs["states"] == ep["states"]  # E·S_e/P slices vs E/P whole experts: the same state per rank
    assert fs["materialized"] == 2 * kw["expert_numel"] * 4 < fsdp["materialized"]
    with pytest.raises(ValueError, match="scheme"):
        memory_per_rank(scheme="zero", **kw)
