"""Gossip mixing matrices against their closed forms (shared/techniques/sharding_and_topology.md §B20)."""
import math

import numpy as np
import pytest

from lab.gossip import GRAPHS, consensus_curve, degree_of, describe, hops, mixing_matrix, ring_gap, spectral_gap


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("n", [2, 5, 8, 12, 16])
def test_every_mixing_matrix_is_doubly_stochastic_and_nonnegative(graph, n):
    for t in range(hops(n)):
        w = mixing_matrix(graph, n, t=t, degree=min(4, n - 1) if n * min(4, n - 1) % 2 == 0 else 2, seed=3)
        assert (w >= 0).all()
        assert np.allclose(w.sum(axis=0), 1, atol=1e-12) and np.allclose(w.sum(axis=1), 1, atol=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 16, 33, 64])
def test_ring_with_weights_one_third_has_the_closed_form_gap(n):
    w = mixing_matrix("ring", n)
    assert np.allclose(w[w > 0], 1 / 3)
    assert spectral_gap(w) == pytest.approx(ring_gap(n), abs=1e-12)
    assert spectral_gap(w) == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3, abs=1e-12)


@pytest.mark.parametrize("n", [4, 8, 16, 32, 64])
def test_static_exponential_graph_gap_is_2_over_1_plus_log2_n(n):
    w = mixing_matrix("exponential", n)
    assert spectral_gap(w) == pytest.approx(2 / (1 + math.log2(n)), abs=1e-9)
    assert degree_of(w).tolist() == [int(math.log2(n))] * n


def test_the_spec_values_at_16_ranks():
    # §B20: second-largest |eigenvalue| 0.949 (ring, 1/3) and 0.600 (static exponential graph)
    assert 1 - spectral_gap(mixing_matrix("ring", 16)) == pytest.approx(0.949, abs=5e-4)
    assert 1 - spectral_gap(mixing_matrix("exponential", 16)) == pytest.approx(0.600, abs=5e-4)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_one_peer_exponential_graph_reaches_the_exact_average_in_log2_n_rounds(n):
    x = np.random.default_rng(n).standard_normal((n, 5))
    y = x.copy()
    tau = int(math.log2(n))
    for t in range(tau):
        w = mixing_matrix("one_peer_exponential", n, t=t)
        assert degree_of(w).tolist() == [1] * n  # one peer per round
        y = w @ y
        if t < tau - 1:
            assert not np.allclose(y, x.mean(0), atol=1e-6)
    assert np.allclose(y, x.mean(0), atol=1e-12)
    assert describe("one_peer_exponential", n)["spectral_gap"] == pytest.approx(1.0)


def test_random_regular_graph_has_the_degree_asked_for_and_is_reproducible():
    w = mixing_matrix("random_regular", 12, degree=3, seed=7)
    assert degree_of(w).tolist() == [3] * 12 and np.allclose(w, w.T)
    assert np.array_equal(w, mixing_matrix("random_regular", 12, degree=3, seed=7))
    assert not np.array_equal(w, mixing_matrix("random_regular", 12, degree=3, seed=8))
    with pytest.raises(ValueError, match="graph_degree=3"):
        mixing_matrix("random_regular", 7, degree=3)


def test_complete_graph_averages_in_one_round_and_torus_uses_4_neighbours():
    assert spectral_gap(mixing_matrix("complete", 9)) == pytest.approx(1.0)
    w = mixing_matrix("torus", 16)
    assert degree_of(w).tolist() == [4] * 16 and np.allclose(w[w > 0], 1 / 5)


def test_better_connected_graphs_reach_consensus_faster():
    ring, torus, expo = (consensus_curve(g, 16, 12)[-1] for g in ("ring", "torus", "exponential"))
    assert expo < ring and torus < ring  # (torus and exponential have the same gap, 0.4, at 16 ranks)


def test_unknown_graph_is_a_clear_error():
    with pytest.raises(ValueError, match="graph='moon'"):
        mixing_matrix("moon", 4)
