"""Bytes per rank per layer, counted by the Ledger from real payloads, equal the spec's formulas
(shared/techniques/sharding_and_topology.md §B2–§B9), and the analytic schedules of lab.sequence.cost
reproduce the Ledger's bytes and seconds exactly. fp32 everywhere: b = 4, multi-head (h_kv = h)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.attention import sp_attention
from lab.sequence.cost import layer_cost
from lab.sequence.dsp import dsp_block
from lab.sequence.lasp import lasp_attention
from lab.sequence.layout import shard
from lab.sequence.star import star_phase2
from lab.topology import preset

B, H, D, b = 2, 8, 4, 4
h = H * D


def run(method, *, p, n, causal=True, topo="ethernet"):
    """Ledger bytes per rank after the forward, and of the backward alone."""
    ledger = Ledger(preset(topo, p))
    coll = SimulatedCollective(world_size=p, ledger=ledger)
    q, k, v = (shard(torch.randn(B, H, n, D), p).requires_grad_() for _ in range(3))
    if method == "lasp":
        out = lasp_attention(q, k, v, collective=coll)
    else:
        out = sp_attention(q, k, v, method=method, collective=coll, causal=causal)
    fwd = ledger.bytes_per_rank().copy()
    out.backward(torch.randn_like(out))
    return fwd, ledger.bytes_per_rank() - fwd, ledger


@pytest.mark.parametrize("p", [2, 4, 8])
def test_ring_attention_bytes(p):
    n = 16 * p
    fwd, bwd, _ = run("ring", p=p, n=n)
    assert (fwd == (p - 1) * 2 * (B * n // p * h) * b).all()
    assert (bwd == (p - 1) * 2 * (B * n // p * h) * b + p * 2 * (B * n // p * h) * 4).all()


@pytest.mark.parametrize("p", [2, 4])
def test_ulysses_bytes_and_constant_when_n_and_p_grow_together(p):
    n = 16 * p
    fwd, bwd, _ = run("ulysses", p=p, n=n)
    want = (p - 1) / p * (B * n / p) * (h + 2 * h + h) * b
    assert np.allclose(fwd, want) and np.allclose(bwd, want)
    assert np.allclose(want, 4 * (p - 1) / p**2 * B * n * h * b)
    fwd2, _, _ = run("ulysses", p=2 * p, n=2 * n)
    assert np.allclose(fwd2, (2 * p - 1) / (2 * p) * (B * n / p) * 4 * h * b)  # only the (P-1)/P factor moves


@pytest.mark.parametrize("p", [2, 4, 8])
def test_token_ring_bytes(p):
    n = 16 * p
    c = n // p
    fwd, bwd, _ = run("token_ring", p=p, n=n)
    q_stream = (p - 1) * (B * c * h) * b
    out_stream = (p - 1) * (B * c * h) * b + (p - 1) * (B * c * H) * 4
    assert (fwd == q_stream + out_stream).all()
    assert (bwd == (p - 1) * B * c * (2 * h * b + 2 * H * 4) + (p - 1) * (B * c * h) * 4).all()  # [RECON] backward


@pytest.mark.parametrize("p", [2, 4, 8])
def test_lasp_bytes_one_state_per_hop_and_independent_of_n(p):
    state = B * H * D * D * 4
    fwd, bwd, _ = run("lasp", p=p, n=8 * p)
    assert fwd.tolist() == [state] * (p - 1) + [0]
    assert bwd.tolist() == [0] + [state] * (p - 1)
    fwd2, bwd2, _ = run("lasp", p=p, n=16 * p)
    assert np.array_equal(fwd, fwd2) and np.array_equal(bwd, bwd2)


def test_burst_and_lss_bytes():
    p, n = 4, 64
    c = n // p
    fwd, bwd, _ = run("burst", p=p, n=n)
    assert (fwd == (p - 1) * 2 * B * c * h * b).all()
    assert (bwd == (p - 1) * B * c * (2 * h * b + 2 * H * 4) + p * B * c * h * 4).all()
    fwd, bwd, _ = run("lss", p=p, n=n)
    assert np.allclose(fwd, (p - 1) / p * 2 * B * n * h * b) and np.allclose(bwd, fwd)


def test_star_phase2_and_dsp_bytes():
    p, nq, c = 4, 3, 8
    ledger = Ledger(preset("ethernet", p))
    coll = SimulatedCollective(world_size=p, ledger=ledger)
    q = torch.randn(1, B, H, nq, D).expand(p, -1, -1, -1, -1)
    star_phase2(q, q, q, torch.randn(p, B, H, c, D), torch.randn(p, B, H, c, D), collective=coll)
    assert (ledger.bytes_per_rank() == (p - 1) * (B * nq * h * b + B * H * nq * 4)).all()
    t, s = 8, 8
    ledger = Ledger(preset("ethernet", p))
    dsp_block(torch.randn(p, B, t // p, s, h), collective=SimulatedCollective(world_size=p, ledger=ledger),
              num_heads=H)
    per_pair = 2 * (p - 1) / p * (B * t * s * h / p) * b
    assert np.allclose(ledger.bytes_per_rank(), per_pair)
    ulysses_both = 2 * 4 * (p - 1) / p * (B * t * s * h / p) * b  # Q, K, V, O all-to-all in each attention
    assert per_pair / ulysses_both == pytest.approx(2 / 8)


@pytest.mark.parametrize("method", ["ring", "token_ring", "ulysses", "usp", "burst", "lss", "lasp"])
@pytest.mark.parametrize("p, topo", [(4, "leaf_spine"), (8, "multinode_4x8")])
def test_schedule_reproduces_the_ledger(method, p, topo):
    n = 16 * p
    t = preset(topo, p)
    fwd, bwd, ledger = run(method, p=p, n=n, causal=True, topo=topo)
    cost = layer_cost(method, topology=t, batch=B, seq=n, heads=H, head_dim=D, causal=True,
                      ulysses_degree=t.ranks_per_node, bytes_per_element=4)
    assert np.array_equal(cost["bytes_fwd"], fwd) and np.array_equal(cost["bytes_bwd"], bwd)
    assert cost["comm_seconds"] == pytest.approx(ledger.seconds, rel=1e-12)
    assert cost["sim_seconds"] <= cost["comm_seconds"] + cost["compute_seconds"] + 1e-15
