"""The α-β cost model: closed-form bytes, algorithm choice, presets and their limits."""
import pytest

from lab.topology import build, preset


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
