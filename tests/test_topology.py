"""The α-β cost model: closed-form bytes, algorithm choice, presets and their limits."""
from dataclasses import replace

import pytest
import torch

from lab.topology import PRESET_SIZES, PRESETS, build, preset


def test_hierarchical_all_reduce_wins_on_slow_inter_node_links_and_has_the_closed_form_bytes():
    t = build(num_nodes=4, ranks_per_node=8, intra_gbit=3600, inter_gbit=100)
    m = 64 * 2**20
    c = t.cost("all_reduce", m)
    assert c.algorithm == "hierarchical"
    k, g = 4, 8
    assert c.bytes["inter"][0] == round(2 * (k - 1) / k * m / g)
    assert c.bytes["intra"][0] == round(2 * (g - 1) / g * m)


def test_flat_ring_on_one_node_takes_2_p_minus_1_steps():
    t = preset("nvlink_node", 8)
    c = t.cost("all_reduce", 8_000_000)
    assert c.algorithm == "ring" and c.messages == 14
    assert c.seconds == pytest.approx(14 * (t.intra.latency_s + 1_000_000 / t.intra.bandwidth))


def test_all_gather_and_reduce_scatter_bytes():
    t = preset("nvlink_node", 4)
    assert t.cost("all_gather", 100).bytes["intra"].tolist() == [300] * 4
    assert t.cost("reduce_scatter", 400).bytes["intra"].tolist() == [300] * 4


def test_pairwise_all_to_all_sends_p_minus_1_over_p_of_the_buffer():
    t = preset("multinode_4x8", 8)  # 4 nodes × 2 ranks
    c = t.cost("all_to_all", 8000)
    per_rank = c.bytes["intra"] + c.bytes["inter"]
    assert per_rank.tolist() == [7000] * 8
    assert c.bytes["intra"][0] == 1000 and c.bytes["inter"][0] == 6000


def test_star_traffic_goes_up_and_down_through_the_server():
    t = preset("phones", 10)
    c = t.cost("all_reduce", 1000)
    assert c.algorithm == "star"
    assert c.bytes["uplink"].tolist() == [1000] * 10 and c.bytes["downlink"].tolist() == [1000] * 10
    assert c.seconds == pytest.approx(t.uplink.time(1000) + t.downlink.time(1000))


def test_presets_refuse_worker_counts_they_cannot_hold():
    with pytest.raises(ValueError, match="num_workers=9"):
        preset("nvlink_node", 9)
    with pytest.raises(ValueError, match="multiple of 4"):
        preset("multinode_4x8", 6)
    with pytest.raises(ValueError, match="topology='moon'"):
        preset("moon", 4)


def test_presets_have_their_documented_shapes():
    assert preset("multinode_4x8").num_nodes == 4 and preset("multinode_4x8").ranks_per_node == 8
    assert preset("wan_sites").num_ranks == 16 and preset("wan_sites").inter.bandwidth == 1e9 / 8
    assert preset("phones").uplink.bandwidth == 20e6 / 8 and preset("phones").num_ranks == 100


# ---- closed forms of every algorithm (shared/techniques/sharding_and_topology.md §0.2, §B1) -----------------
import math  # noqa: E402

import numpy as np  # noqa: E402

from lab.comm import Ledger, SimulatedCollective  # noqa: E402
from lab.topology import ALGORITHMS, Link, Topology  # noqa: E402


def flat(p, gbit=100.0, latency=5e-6):
    return build(num_nodes=1, ranks_per_node=p, intra_gbit=gbit, inter_gbit=gbit, intra_latency_s=latency)


def sent(c):
    return c.bytes["intra"] + c.bytes["inter"]


@pytest.mark.parametrize("p", [4, 8, 16])
def test_ring_all_reduce_sends_2_p_minus_1_over_p_of_the_payload_in_2_p_minus_1_steps(p):
    m = 3 * 2**20
    c = flat(p).pin({"all_reduce": "ring"}).cost("all_reduce", m)
    assert sent(c).tolist() == [round(2 * (p - 1) / p * m)] * p
    assert c.messages == 2 * (p - 1)


@pytest.mark.parametrize("k,g", [(2, 4), (4, 8), (8, 2), (3, 3)])
def test_hierarchical_all_reduce_puts_2_k_minus_1_over_k_of_n_over_g_on_inter_node_links(k, g):
    t = build(num_nodes=k, ranks_per_node=g, intra_gbit=1000, inter_gbit=10).pin({"all_reduce": "hierarchical"})
    n = 9 * 2**20
    c = t.cost("all_reduce", n)
    assert c.algorithm == "hierarchical"
    assert c.bytes["inter"].tolist() == [round(2 * (k - 1) / k * n / g)] * (k * g)
    assert c.bytes["intra"].tolist() == [round(2 * (g - 1) / g * n)] * (k * g)
    assert c.messages == 2 * (g - 1) + 2 * (k - 1)


@pytest.mark.parametrize("name", ["pairwise", "direct"])
@pytest.mark.parametrize("p", [4, 8, 16])
def test_all_to_all_sends_p_minus_1_over_p_of_the_send_buffer(name, p):
    y = p * 1000
    c = flat(p).pin({"all_to_all": name}).cost("all_to_all", y)
    assert sent(c).tolist() == [(p - 1) * y // p] * p
    assert c.messages == (p - 1 if name == "pairwise" else 1)


def test_bruck_all_to_all_trades_bytes_for_log_p_steps():
    p, y = 8, 8000
    c = flat(p).pin({"all_to_all": "bruck"}).cost("all_to_all", y)
    assert c.messages == 3 and sent(c).tolist() == [3 * (p // 2) * y // p] * p  # log2 P rounds of P/2 blocks


def test_recursive_halving_doubling_matches_the_spec_check_6_steps_and_112_of_64_elements():
    c = flat(8).pin({"all_reduce": "rhd"}).cost("all_reduce", 64)  # check_coll.py: P=8, 64 elements
    assert c.messages == 6 and sent(c).tolist() == [112] * 8
    for p in (4, 16):
        c = flat(p).pin({"all_reduce": "rhd"}).cost("all_reduce", 2**20)
        assert c.messages == 2 * int(math.log2(p)) and sent(c).tolist() == [round(2 * (p - 1) / p * 2**20)] * p


def test_torus_all_reduce_has_the_per_dimension_closed_forms():
    t = preset("torus_2d", 16)  # 4 × 4
    x = y = 4
    m = 2**22
    c = t.cost("all_reduce", m)
    assert c.algorithm == "torus"
    assert c.bytes["intra"].tolist() == [round(2 * (x - 1) / x * m)] * 16  # along X rings
    assert c.bytes["inter"].tolist() == [round(2 * (y - 1) / y * m / x)] * 16  # along Y rings, on M/X
    assert c.messages == 2 * (x - 1) + 2 * (y - 1)


def test_recursive_doubling_and_halving_move_the_ring_bytes_in_log_p_steps():
    t = flat(8)
    ag = t.pin({"all_gather": "recursive_doubling"}).cost("all_gather", 1000)
    rs = t.pin({"reduce_scatter": "recursive_halving"}).cost("reduce_scatter", 8000)
    assert ag.messages == rs.messages == 3
    assert sent(ag).tolist() == [7000] * 8 and sent(rs).tolist() == [7000] * 8


def test_binomial_broadcast_takes_ceil_log2_p_rounds_and_the_root_sends_log2_p_copies():
    c = flat(8).pin({"broadcast": "binomial_tree"}).cost("broadcast", 1000)
    assert c.messages == 3 and sent(c)[0] == 3000 and sent(c).sum() == 7000
    c6 = flat(6).pin({"broadcast": "binomial_tree"}).cost("broadcast", 1000)
    assert c6.messages == 3 and sent(c6).sum() == 5000


def test_double_binary_tree_sends_about_2m_and_pays_log_p_latency():
    p, m = 16, 2**20
    t = flat(p, latency=1e-3)
    tree = t.pin({"all_reduce": "tree"}).cost("all_reduce", m)
    ring = t.pin({"all_reduce": "ring"}).cost("all_reduce", m)
    # every non-root sends M/2 up each tree and every edge carries M/2 down: 2(P-1)·M in all, ≈ 2M per rank
    assert sent(tree).sum() == 2 * (p - 1) * m and sent(tree).max() <= 2.5 * m
    assert tree.seconds < ring.seconds  # latency-bound: 2 log P hops against 2(P-1) steps


def test_parameter_server_star_incast_grows_with_ranks_and_shards_spread_it():
    t = flat(8)
    one, four = (t.pin({"all_reduce": "star"}).cost("all_reduce", 2**20),
                 replace(t, server_shards=4).pin({"all_reduce": "star"}).cost("all_reduce", 2**20))
    assert sent(one)[0] == 7 * 2**20 and sent(one)[1] == 2**20  # the server sends the sum back to 7 ranks
    assert four.seconds < one.seconds


def test_hierarchical_beats_flat_ring_when_inter_beta_is_10x_intra():
    t = build(num_nodes=4, ranks_per_node=4, intra_gbit=1000, inter_gbit=100)
    big = 256 * 2**20
    assert t.pin({"all_reduce": "hierarchical"}).cost("all_reduce", big).seconds < \
        t.pin({"all_reduce": "ring"}).cost("all_reduce", big).seconds
    assert t.cost("all_reduce", big).algorithm == "hierarchical"


# ---- choosing and pinning ---------------------------------------------------------------------------
def test_cheapest_picks_latency_optimal_algorithms_for_small_messages_and_bandwidth_optimal_for_large():
    t = build(num_nodes=8, ranks_per_node=1, intra_gbit=100, inter_gbit=100, inter_latency_s=1e-4)
    cheap = t.pin({"all_reduce": "cheapest"})
    small = cheap.cost("all_reduce", 64)  # 2 steps of a one-shard parameter server, or log-depth trees
    assert small.algorithm in ("tree", "rhd", "star") and small.messages <= 2 * 3
    assert cheap.cost("all_reduce", 256 * 2**20).algorithm in ("ring", "rhd")
    assert t.cost("all_reduce", 64).algorithm == "ring"  # 'auto' stays in the ring family


def test_a_pinned_algorithm_is_used_recorded_in_the_ledger_and_falls_back_when_it_does_not_apply():
    t = Topology("pinned", 8, 8, Link(5e-6, 1e10), Link(1e-5, 1e9), 1e12, algorithm={"all_reduce": "tree"})
    coll = SimulatedCollective(world_size=8, ledger=Ledger(t))
    coll.all_reduce(torch.ones(8, 100))
    assert coll.ledger.entries[-1].algorithm == "tree" and coll.ledger.table().algorithm.tolist() == ["tree"]
    six = flat(6).pin({"all_reduce": "rhd"})  # rhd needs a power of two
    assert six.cost("all_reduce", 1000).algorithm == "ring"
    with pytest.raises(ValueError, match="does not apply"):
        six.check_algorithm("all_reduce", "rhd")
    with pytest.raises(ValueError, match="allowed"):
        flat(4).pin({"all_reduce": "magic"})


def test_config_field_pins_the_all_reduce_algorithm_and_validates_it():
    from lab.experiment import ExperimentConfig, run

    r = run(ExperimentConfig(technique="ddp", num_workers=4, steps=2, eval_every=2, all_reduce_algorithm="tree"),
            save=False, progress=False)
    assert set(r.ledger.algorithm) == {"tree"}
    with pytest.raises(ValueError, match="all_reduce_algorithm='rhd'"):
        ExperimentConfig(num_workers=6, all_reduce_algorithm="rhd")


# ---- the network model ------------------------------------------------------------------------------------
def test_a_rank_sending_to_several_peers_at_once_shares_its_nic():
    t = flat(4, latency=0.0)
    one = t.peer_cost([(0, 1)], 1e6, "mix").seconds
    three = t.peer_cost([(0, 1), (0, 2), (0, 3)], 1e6, "mix").seconds
    spread = t.peer_cost([(0, 1), (2, 3)], 1e6, "mix").seconds
    assert three == pytest.approx(3 * one) and spread == pytest.approx(one)


def test_oversubscription_slows_traffic_that_leaves_nodes_at_once_but_not_a_ring():
    base = build(num_nodes=4, ranks_per_node=4, intra_gbit=1000, inter_gbit=100)
    over = replace(base, oversubscription=4.0)
    a2a = {"all_to_all": "direct"}  # every rank sends across the fabric at once: 4 NICs share one uplink's worth
    assert over.pin(a2a).cost("all_to_all", 2**24).seconds > 3 * base.pin(a2a).cost("all_to_all", 2**24).seconds
    ring = {"all_reduce": "ring"}  # in rank order only one rank per node sends off-node: uplinks are not the limit
    assert over.pin(ring).cost("all_reduce", 2**24).seconds == base.pin(ring).cost("all_reduce", 2**24).seconds
    one_node = [0, 1, 2, 3]
    assert over.cost("all_to_all", 2**24, ranks=one_node).seconds == base.cost("all_to_all", 2**24,
                                                                              ranks=one_node).seconds


def test_heterogeneous_client_uplinks_make_the_slowest_client_the_round_time():
    t = preset("phones_mixed", 10)
    slowest = min(t.client_uplinks)
    c = t.cost("server_gather", 1e6)
    assert c.seconds == pytest.approx(t.uplink.latency_s + 1e6 / slowest)
    assert c.bytes["uplink"].tolist() == [10**6] * 10


def test_traffic_matrix_follows_the_schedule():
    c = flat(4).pin({"all_reduce": "ring"}).cost("all_reduce", 4000)
    tr = c.traffic[:4, :4]
    assert np.count_nonzero(tr) == 4 and all(tr[r, (r + 1) % 4] == 6000 for r in range(4))


def test_every_preset_builds_and_costs_every_op():
    for name in PRESETS:
        t = preset(name)
        assert t.description and t.num_ranks == PRESET_SIZES[name]
        for op in ALGORITHMS:
            c = t.cost(op, 4096)
            assert c.seconds > 0 and c.algorithm and sum(v.sum() for v in c.bytes.values()) > 0
    assert preset("leaf_spine", 8).oversubscription == 4 and preset("torus_2d", 8).shape == "torus"
    with pytest.raises(ValueError, match="torus_2d"):
        preset("torus_2d", 7)


def test_stragglers_slow_only_the_last_ranks():
    t = preset("nvlink_node", 4).with_stragglers(1, 3.0)
    assert t.compute_seconds_per_rank(1e12).tolist() == pytest.approx([2.5e-3, 2.5e-3, 2.5e-3, 7.5e-3])
