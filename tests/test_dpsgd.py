"""D-PSGD: decentralized SGD over gossip graphs (Lian et al. 2017; shared/techniques/sharding_and_topology.md §B20)."""
import pytest
import torch

from lab.experiment import ExperimentConfig, run


def quick(**kw):
    return run(ExperimentConfig(technique="dpsgd", **kw), save=False, progress=False)


def test_complete_graph_with_h1_equals_ddp_averaging():
    base = dict(num_workers=4, steps=20, eval_every=10, lr=0.1)
    ddp = run(ExperimentConfig(technique="ddp", **base), save=False, progress=False)
    dpsgd = quick(graph="complete", sync_period=1, **base)
    # every rank holds x̄ - lr·mean(g) in both; only the order of float additions differs
    assert torch.allclose(dpsgd.worker_params, ddp.worker_params, atol=1e-6, rtol=0)
    assert torch.allclose(dpsgd.model, ddp.model, atol=1e-6, rtol=0)
    assert dpsgd.metrics.consensus_distance.max() < 1e-5


def test_ring_consensus_distance_is_larger_than_on_the_exponential_graph_at_the_same_step():
    base = dict(num_workers=8, steps=30, eval_every=30, partition="dirichlet", dirichlet_alpha=0.3, sync_period=1)
    ring, expo = quick(graph="ring", **base), quick(graph="exponential", **base)
    assert (ring.metrics.step == expo.metrics.step).all()
    later = ring.metrics.step >= 5
    assert (ring.metrics.consensus_distance[later] > expo.metrics.consensus_distance[later]).all()
    assert ring.metrics.spectral_gap.iloc[0] < expo.metrics.spectral_gap.iloc[0]


@pytest.mark.parametrize("graph,degree", [("ring", 2), ("exponential", 3), ("one_peer_exponential", 1),
                                          ("complete", 7)])
def test_each_rank_sends_its_parameters_to_its_out_neighbours_every_h_steps(graph, degree):
    r = quick(graph=graph, num_workers=8, steps=12, sync_period=4, eval_every=12)
    d = r.model.numel()
    assert len(r.ledger) == 3 and set(r.ledger.step) == {3, 7, 11}
    per_round = r.ledger.bytes_intra.iloc[0] + r.ledger.bytes_inter.iloc[0]
    assert per_round == 8 * degree * 4 * d
    assert set(r.ledger.op) == {"mix"} and set(r.ledger.algorithm) == {"p2p"}
    assert r.metrics.sync_period.tolist() == [4, 4, 4]


def test_the_gossip_period_is_the_shared_sync_period_knob():
    from lab.config import KNOBS, reads

    assert "sync_period" in reads("dpsgd") and "gossip_period" not in KNOBS
    r = quick(graph="ring", num_workers=4, steps=10, sync_period=4, eval_every=10)
    assert r.ledger.step.tolist() == [3, 7, 9]  # the last round is cut to the steps left
    assert r.metrics.sync_period.tolist() == [4, 4, 2]
    with pytest.raises(ValueError, match="compressor='topk' is not read"):
        ExperimentConfig(technique="dpsgd", compressor="topk", compression_ratio=0.1)


def test_graph_degree_is_validated_for_random_regular_graphs():
    with pytest.raises(ValueError, match="graph_degree=3"):
        ExperimentConfig(technique="dpsgd", graph="random_regular", num_workers=5, graph_degree=3)
    r = quick(graph="random_regular", graph_degree=3, num_workers=6, steps=4, eval_every=4)
    assert r.status == "finished"


@pytest.mark.gloo
@pytest.mark.slow
def test_dpsgd_on_gloo_processes_equals_the_simulated_run():
    from lab.launch import compare_with_simulated

    cfg = ExperimentConfig(technique="dpsgd", graph="one_peer_exponential", num_workers=4, steps=8, sync_period=1,
                           eval_every=4)
    eq = compare_with_simulated(cfg)
    assert eq.max_param_diff <= 1e-6 and eq.ledgers_equal and eq.metrics_equal, eq
