"""The 3-level (Frontier) scheme: reduces to ZeRO++ when a GPU is the whole node, never sends more across
nodes than ZeRO++, beats it on a 20B-shaped model with the Frontier tiers, and runs for real (spec §A4)."""
import pytest
import torch

from lab import topology as topo
from lab.comm.collective import group_cost
from lab.experiment import ExperimentConfig, run
from lab.sharding.frontier import TIERS, ThreeLevel, compare, price, scheme_calls


def test_three_tier_ring_puts_each_hop_on_its_tier():
    net = ThreeLevel(num_ranks=16, dies_per_gpu=2, ranks_per_node=8)
    _, sent = net.cost("all_gather", 100.0, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]])
    assert sent["die"].tolist() == [100.0] * 16 and sent["gpu"].sum() == sent["node"].sum() == 0
    _, sent = net.cost("reduce_scatter", 160.0, None)  # one ring over 16 ranks: (P-1)/P · M per rank
    assert sum(sent[t] for t in TIERS).tolist() == [150.0] * 16
    assert sent["node"].sum() == 2 * 150.0  # ranks 7 and 15 send across nodes


def test_a_gpu_as_large_as_the_node_is_zeropp():
    net = ThreeLevel(num_ranks=32, dies_per_gpu=8, ranks_per_node=8)
    zeropp, frontier = (price(scheme_calls(s, 10**9, net, secondary_level=1), net) for s in ("zeropp", "frontier"))
    assert frontier == zeropp


@pytest.mark.parametrize("secondary_level,qgz", [(1, False), (2, False), (1, True)])
def test_three_levels_never_send_more_across_nodes_and_beat_zeropp_on_a_20b_model(secondary_level, qgz):
    rows = {r["scheme"]: r for r in compare(20_000_000_000, secondary_level=secondary_level, qgz=qgz, units=44)}
    assert rows["frontier"]["bytes_node"] <= rows["zeropp"]["bytes_node"] < rows["zero3"]["bytes_node"]
    assert rows["frontier"]["seconds"] < rows["zeropp"]["seconds"] < rows["zero3"]["seconds"]
    if secondary_level == 1:  # the price: the secondary copy is split 2 ways instead of 8
        assert rows["frontier"]["secondary_bytes"] == 4 * rows["zeropp"]["secondary_bytes"]


def test_the_scheme_runs_for_real_and_ends_where_ddp_ends():
    # 16 ranks on 4 nodes of 4 (2 GPUs of 2 dies each): reduce by dies, GPUs, nodes; secondary copy on the dies
    cfg = ExperimentConfig(technique="zero", num_workers=16, topology="multinode_4x8", steps=3, eval_every=3,
                           optimizer="adamw", lr=0.01, batch_size=8, zeropp="hpz", hpz_size=2,
                           reduce_levels="die+node", dies_per_gpu=2)
    ddp = run(cfg.as_technique("ddp"), save=False, progress=False)
    z = run(cfg, save=False, progress=False)
    assert torch.allclose(z.worker_params, ddp.worker_params, atol=1e-6, rtol=0)
    led = z.ledger
    assert (led[led.tag == "params_bwd"].bytes_inter == 0).all()
    # what ran is the schedule the analytic comparison prices (one unit, fp32), link class by link class
    t = topo.preset("multinode_4x8", 16)
    calls = scheme_calls("frontier", 4810, ThreeLevel(num_ranks=16, dies_per_gpu=2, ranks_per_node=4),
                         secondary_level=1, param_bytes=4, grad_bytes=4)
    for cls in ("intra", "inter"):
        predicted = sum(int(group_cost(t, c.op, int(c.payload), c.groups or [list(range(16))]).bytes[cls].sum())
                        for c in calls)
        assert predicted * 3 == led[f"bytes_{cls}"].sum(), cls


def test_bad_levels_are_clear_errors():
    with pytest.raises(ValueError, match="dies_per_gpu"):
        ExperimentConfig(technique="zero", num_workers=16, topology="multinode_4x8", reduce_levels="die+node",
                         dies_per_gpu=3)
    with pytest.raises(ValueError, match="reduce_levels"):
        ExperimentConfig(technique="zero", num_workers=8, sharding_degree=4, reduce_levels="node")
    with pytest.raises(ValueError, match="dies_per_gpu"):
        ThreeLevel(num_ranks=16, dies_per_gpu=3, ranks_per_node=8)
