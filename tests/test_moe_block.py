"""The MoE transformer block: top-k routing with capacity and the load-balancing loss on hand-built cases, and
expert parallelism over the Collective equal to the single-device MoE (same routing) within 1e-6, simulated and
on 4 gloo processes; the all_to_all_v is charged its true bytes."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab.comm import Ledger, SimulatedCollective
from lab.moe.exchange import all_to_all_v
from lab.moe.model import DenseLayout, MoEShape, forward, init_model
from lab.moe.router import capacity, route
from lab.moe.strategies import ExpertParallelExperts, Replicated
from lab.topology import build, preset

P, V = 4, 11


# ---- the router on hand-built cases -------------------------------------------------------------------
def test_load_balance_loss_is_one_when_uniform_and_e_when_collapsed():
    e, t = 4, 8
    spread = 10.0 * torch.nn.functional.one_hot(torch.arange(t) % e, e).float().unsqueeze(0)  # token t -> t mod E
    r = route(spread, top_k=1)
    assert torch.equal(r.counts[0], torch.tensor([2, 2, 2, 2]))
    assert r.aux_loss.item() == pytest.approx(1.0, abs=1e-6)  # E · sum_e (1/E)(1/E)
    collapsed = torch.zeros(1, t, e)
    collapsed[..., 0] = 50.0
    r = route(collapsed, top_k=1)
    assert torch.equal(r.counts[0], torch.tensor([8, 0, 0, 0]))
    assert r.aux_loss.item() == pytest.approx(e, rel=1e-6)  # f_0 = 1, P_0 = 1
    assert torch.allclose(r.gate, r.probs[..., :1])  # top-1: the gate is the router probability


def test_capacity_drops_past_the_last_slot_and_counts_them():
    e, t = 4, 8
    logits = torch.zeros(1, t, e)
    logits[..., 0] = 5.0  # everyone wants expert 0
    r = route(logits, top_k=1, capacity_factor=1.0)  # C = ceil(1 · 1 · 8 / 4) = 2
    assert r.capacity == 2 == capacity(8, num_experts=4, top_k=1, capacity_factor=1.0)
    assert r.position[0, :, 0].tolist() == list(range(8))
    assert r.keep[0, :, 0].tolist() == [True, True] + [False] * 6
    assert r.dropped.tolist() == [6]
    assert route(logits, top_k=1).dropped.tolist() == [0]  # dropless


def test_first_choices_take_the_slots_before_second_choices():
    # 4 tokens, 2 experts, top-2: tokens 0, 1 prefer expert 0, tokens 2, 3 expert 1; C = ceil(0.5·2·4/2) = 2
    logits = torch.tensor([[[2.0, 1.0], [2.0, 1.0], [1.0, 2.0], [1.0, 2.0]]])
    r = route(logits, top_k=2, capacity_factor=0.5)
    assert r.capacity == 2
    assert r.expert[0].tolist() == [[0, 1], [0, 1], [1, 0], [1, 0]]
    assert r.keep[0].tolist() == [[True, False], [True, False], [True, False], [True, False]]
    assert r.dropped.tolist() == [4]
    assert torch.allclose(r.gate.sum(-1), torch.ones(1, 4))  # top-k gates are renormalized


@pytest.mark.parametrize("kw,field", [(dict(top_k=5), "top_k"), (dict(top_k=0), "top_k"),
                                      (dict(top_k=1, capacity_factor=-1.0), "capacity_factor"),
                                      (dict(top_k=1, capacity_factor=float("nan")), "capacity_factor")])
def test_bad_routing_settings_are_refused(kw, field):
    with pytest.raises(ValueError, match=field):
        route(torch.zeros(1, 3, 4), **kw)


# ---- expert parallelism against the single-device MoE -------------------------------------------------------
def close(a, b, tol=1e-6) -> bool:
    """max |a − b| <= tol relative to the larger of 1 and max |b| (fp32; only summation order differs)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def case(top_k: int, capacity_factor: float):
    shape = MoEShape("gpt", V, V, block_size=8, hidden=16, heads=2, num_layers=1, ffn=24, num_experts=8,
                     top_k=top_k, capacity_factor=capacity_factor)
    dense, experts = init_model(shape, seed=3)
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, V, (P, 2, 8), generator=g)  # (P, B, T)
    dy = torch.randn(P, 2, 8, V, generator=g)
    return shape, dense, experts, x, dy


def run_block(shape, dense, experts, x, dy, coll, strategy):
    """Forward and backward of sum(logits · dy) + aux on the local ranks; returns logits, dense and expert grads
    (n, ·), the strategy."""
    layout = DenseLayout(shape.dense_shapes())
    d, n = layout.dim, coll.num_local
    rows = torch.cat([layout.flatten(dense).repeat(n, 1), strategy.init_rows(experts)], 1).requires_grad_(True)
    xs, dys = x[coll.ranks], dy[coll.ranks]
    logits, aux, _ = forward(shape, layout.unflatten(rows[:, :d]), xs,
                             lambda l, t, r: strategy.layer(rows[:, d:], l, t, r, tag=f"moe{l}"))
    ((logits * dys).sum() + aux.sum()).backward()
    return logits.detach(), rows.grad[:, :d], rows.grad[:, d:], strategy


def single_device(shape, dense, experts, x, dy):
    """Each rank's batch on one device with every expert: logits (P, ...), summed dense and expert grads."""
    outs, dgrad, egrad = [], 0, 0
    for r in range(P):
        coll = SimulatedCollective(world_size=1, ledger=Ledger(preset("nvlink_node", 1)))
        logits, dg, eg, strat = run_block(shape, dense, experts, x[r:r + 1], dy[r:r + 1], coll,
                                          Replicated(coll, shape))
        outs.append(logits[0])
        dgrad, egrad = dgrad + dg[0], egrad + eg[0]
    return torch.stack(outs), dgrad, egrad


@pytest.mark.parametrize("top_k,cf", [(1, 0.0), (2, 0.0), (2, 1.0), (1, 1.25)])
def test_expert_parallel_block_equals_single_device_moe(top_k, cf):
    shape, dense, experts, x, dy = case(top_k, cf)
    ref_logits, ref_dense, ref_experts = single_device(shape, dense, experts, x, dy)
    coll = SimulatedCollective(world_size=P, ledger=Ledger(preset("nvlink_node", P)))
    logits, dgrad, egrad, strat = run_block(shape, dense, experts, x, dy, coll, ExpertParallelExperts(coll, shape))
    assert close(logits, ref_logits)
    assert close(dgrad.sum(0), ref_dense)  # dense grads summed over ranks (the DDP all-reduce)
    w1, w2 = strat.full_experts(egrad)[0]
    assert close(torch.cat([w1.flatten(1), w2.flatten(1)], 1).reshape(-1), ref_experts)
    # the dispatch sent exactly the kept (token, choice) pairs that left their rank, h fp32 values each
    table = coll.ledger.table()
    plan = strat.ep.last_plan
    off = plan.rows.sum() - np.trace(plan.rows)
    for tag in ("moe0_dispatch", "moe0_combine", "moe0_dispatch_bwd", "moe0_combine_bwd"):
        assert table.query("tag == @tag").bytes_intra.sum() == off * shape.hidden * 4, tag


def test_all_to_all_v_charges_true_bytes_and_self_sends_nothing():
    three_nodes = build(num_nodes=3, ranks_per_node=1, intra_gbit=100, inter_gbit=10)
    coll = SimulatedCollective(world_size=3, ledger=Ledger(three_nodes))
    rows = np.array([[5, 1, 0], [2, 0, 3], [0, 4, 9]])
    x = torch.arange(3 * 3 * 9 * 2, dtype=torch.float32).view(3, 3, 9, 2)
    out = all_to_all_v(coll, x, rows, tag="v")
    assert torch.equal(out, x.transpose(0, 1))
    e = coll.ledger.entries[-1]
    assert e.bytes["inter"].tolist() == [1 * 8, (2 + 3) * 8, 4 * 8]  # 2 fp32 per row, the diagonal free
    assert e.algorithm == "pairwise_v" and e.messages == 2  # P - 1 pairwise steps


# ---- the same on gloo --------------------------------------------------------------------------------------
def _gloo_worker(rank, port, out_dir, top_k, cf):
    from lab.comm.distributed import DistributedCollective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=P, init_method=f"tcp://127.0.0.1:{port}")
    try:
        shape, dense, experts, x, dy = case(top_k, cf)
        coll = DistributedCollective(ledger=Ledger(preset("nvlink_node", P)))
        logits, dg, eg, strat = run_block(shape, dense, experts, x, dy, coll, ExpertParallelExperts(coll, shape))
        full = strat.full_experts(eg)[0]
        torch.save({"logits": logits[0], "dense": dg[0], "experts": full, "ledger": coll.ledger.table()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.gloo
@pytest.mark.slow
@pytest.mark.parametrize("top_k,cf", [(2, 1.0)])
def test_expert_parallel_block_on_gloo_equals_single_device_moe(tmp_path, top_k, cf):
    from lab.launch import free_port

    mp.spawn(_gloo_worker, args=(free_port(), str(tmp_path), top_k, cf), nprocs=P, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(P)]
    shape, dense, experts, x, dy = case(top_k, cf)
    ref_logits, ref_dense, ref_experts = single_device(shape, dense, experts, x, dy)
    assert close(torch.stack([g["logits"] for g in got]), ref_logits)
    assert close(sum(g["dense"] for g in got), ref_dense)
    w1, w2 = got[0]["experts"]
    assert close(torch.cat([w1.flatten(1), w2.flatten(1)], 1).reshape(-1), ref_experts)
    sim = SimulatedCollective(world_size=P, ledger=Ledger(preset("nvlink_node", P)))
    run_block(shape, dense, experts, x, dy, sim, ExpertParallelExperts(sim, shape))
    for g in got:  # every process recorded the Ledger the simulation did
        assert g["ledger"].drop(columns="seconds").equals(sim.ledger.table().drop(columns="seconds"))
