"""LocMoE, ScMoE and PPMoE on the MoE block: LocMoE moves dispatch bytes off the inter-node links as mu grows;
ScMoE's overlap hides the all-to-alls on the simulated clock when they fit behind attention and the shared expert;
PPMoE equals the single-device MoE with zero inter-node MoE bytes and trains exactly as replicated experts do."""
import numpy as np
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.config import ExperimentConfig
from lab.experiment import run
from lab.moe.layer import reference
from lab.moe.locmoe import LocalityRouting
from lab.moe.model import MoEShape, init_model
from lab.moe.ppmoe import PPMoE
from lab.moe.router import route
from lab.moe.scmoe import LayerTimes, exposed_seconds, timeline
from lab.topology import preset

P, T, H = 4, 32, 16


def layer_inputs(num_experts=4, top_k=2, seed=0):
    shape = MoEShape("mlp", 4, 2, hidden=H, num_layers=1, ffn=24, num_experts=num_experts, top_k=top_k)
    _, experts = init_model(shape, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    return shape, experts, torch.randn(P, T, H, generator=g), torch.randn(H, num_experts, generator=g) / H ** 0.5


def test_locmoe_inter_node_bytes_fall_monotonically_with_mu():
    shape, experts, x, router = layer_inputs()
    inter, intra, imbalance = [], [], []
    for mu in (0.0, 0.05, 0.2, 1.0):
        coll = SimulatedCollective(world_size=P, ledger=Ledger(preset("leaf_spine", P)))  # 2 nodes x 2 ranks
        strat = LocalityRouting(coll, shape, mu=mu)
        rows = strat.init_rows(experts)
        strat.layer(rows, 0, x, route(x @ router, top_k=2, bias=strat.bias(0)), tag="moe0")
        t = coll.ledger.table().query("tag == 'moe0_dispatch'")
        inter.append(int(t.bytes_inter.sum()))
        intra.append(int(t.bytes_intra.sum()))
        imbalance.append(strat.load_history[-1].max() / strat.load_history[-1].mean())
    assert all(a >= b for a, b in zip(inter, inter[1:])) and inter[0] > 0
    assert inter[-1] == 0  # top-2 of 2 experts per node: everything stays on the node
    assert intra[-1] > intra[0]


def test_locmoe_trains_and_its_routing_changes_the_model():
    base = dict(num_workers=4, model="mlp", dataset="digits", num_experts=4, steps=6, eval_every=6,
                optimizer="adamw", lr=0.01, batch_size=8, topology="leaf_spine")
    ep = run(ExperimentConfig(technique="moe_ep", **base), save=False, progress=False).metrics.iloc[-1]
    loc = run(ExperimentConfig(technique="locmoe", locmoe_mu=1.0, **base), save=False, progress=False).metrics.iloc[-1]
    assert np.isfinite(loc.loss) and loc.loss != ep.loss  # E3: a different model
    assert loc.bytes_inter < ep.bytes_inter


def test_scmoe_overlap_hides_the_all_to_alls_that_fit():
    fits = [LayerTimes(attention=3.0, shared=2.0, experts=1.0, dispatch=2.5, combine=1.5, dispatch_bwd=2.5,
                       combine_bwd=1.5)] * 2
    serial, overlapped = timeline(fits, shortcut=False), timeline(fits, shortcut=True)
    comm = 2 * (2.5 + 1.5 + 2.5 + 1.5)
    assert exposed_seconds(serial) == pytest.approx(comm)
    assert exposed_seconds(overlapped) == pytest.approx(0.0, abs=1e-12)  # a2a <= attention + shared: all hidden
    slow = [LayerTimes(attention=1.0, shared=0.5, experts=1.0, dispatch=4.0, combine=2.0)]
    exposed = exposed_seconds(timeline(slow, shortcut=True, backward=False))
    assert exposed == pytest.approx((4.0 - 1.0) + (2.0 - 0.5))  # what does not fit stays on the critical path


def test_scmoe_technique_reports_hidden_communication():
    cfg = ExperimentConfig(technique="scmoe", num_workers=4, model="gpt", dataset="chars", num_experts=4, top_k=1,
                           steps=3, eval_every=3, batch_size=4, lr=0.01, optimizer="adamw", topology="leaf_spine")
    m = run(cfg, save=False, progress=False).metrics.iloc[-1]
    assert m.hidden_seconds > 0
    assert m.sim_seconds == pytest.approx(m.compute_seconds + m.comm_seconds - m.hidden_seconds)


def test_ppmoe_equals_single_device_moe_with_no_inter_node_bytes():
    shape, experts, x, router = layer_inputs(num_experts=4)
    x = x[[0, 0, 2, 2]].clone().requires_grad_(True)  # a tensor-parallel group holds the same tokens
    coll = SimulatedCollective(world_size=P, ledger=Ledger(preset("leaf_spine", P)))
    strat = PPMoE(coll, shape, tp_size=2)
    rows = strat.init_rows(experts).requires_grad_(True)
    routing = route(x @ router, top_k=2)
    y = strat.layer(rows, 0, x, routing, tag="moe0")
    ref = reference(x.detach(), route(x.detach() @ router, top_k=2), *experts[0])
    assert torch.allclose(y, ref, atol=1e-6)
    y[[0, 2]].sum().backward()  # each group's loss once (the other ranks of the group hold copies)
    t = coll.ledger.table()
    assert t.bytes_inter.sum() == 0 and t.bytes_intra.sum() > 0  # one all-reduce inside each node
    assert set(t.tag) == {"moe0_combine", "moe0_tokens_bwd", "moe0_gates_bwd"}


def test_ppmoe_trains_exactly_as_replicated_experts_on_one_rank_per_group():
    base = dict(model="mlp", dataset="digits", num_experts=4, steps=5, eval_every=5, optimizer="sgd", lr=0.1,
                batch_size=8)
    pp = run(ExperimentConfig(technique="ppmoe", num_workers=4, tp_size=2, **base), save=False, progress=False)
    dp = run(ExperimentConfig(technique="moe_dp", num_workers=2, **base), save=False, progress=False)
    assert np.allclose(pp.metrics.loss, dp.metrics.loss, atol=1e-5)
    assert (pp.model - dp.model).abs().max() <= 1e-5
