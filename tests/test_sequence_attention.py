"""Every sequence-parallel softmax-attention method equals full attention, forward and backward.

Tolerance: 1e-5 absolute in fp32 (spec §0.3 E1), for P = 2, 4, 8 simulated ranks, non-causal and
causal with the contiguous and zigzag layouts. LASP, Star Attention and DSP have their own test files.
"""
from __future__ import annotations

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.attention import METHODS, sp_attention
from lab.sequence.kernels import attention, block_attention, merge
from lab.sequence.layout import positions, shard, sp_groups, unshard
from lab.topology import preset

TOL = 1e-5
MASKS = [(False, "contiguous"), (True, "contiguous"), (True, "zigzag")]


def topology(p: int):
    """Two ranks per node from P = 4 on, so USP mixes an intra-node all-to-all with an inter-node ring."""
    return preset("leaf_spine", p) if p >= 4 else preset("ethernet", p)


def full_and_grads(q, k, v, d_out, causal):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, causal=causal)
    return out.detach(), torch.autograd.grad(out, (q, k, v), d_out)


def run_sp(method, q, k, v, d_out, *, p, causal, layout, groups=None, topo=None):
    coll = SimulatedCollective(world_size=p, ledger=Ledger(topo or topology(p)))
    g = p if groups is None else len(groups[0])
    qs, ks, vs = (shard(t, g, layout).repeat(p // g, *([1] * t.dim())).requires_grad_() for t in (q, k, v))
    out = sp_attention(qs, ks, vs, method=method, collective=coll, causal=causal, layout=layout, groups=groups)
    out.backward(shard(d_out, g, layout).repeat(p // g, *([1] * d_out.dim())))
    return out.detach(), (qs.grad, ks.grad, vs.grad), coll.ledger


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_equals_full_attention_forward_and_backward(method, p):
    torch.manual_seed(p)
    b, h, n, d = 2, 8, 48, 8
    q, k, v, d_out = (torch.randn(b, h, n, d) for _ in range(4))
    for causal, layout in MASKS:
        ref, ref_grads = full_and_grads(q, k, v, d_out, causal)
        out, grads, _ = run_sp(method, q, k, v, d_out, p=p, causal=causal, layout=layout)
        assert (unshard(out, layout) - ref).abs().max() < TOL, (method, p, causal, layout)
        for name, got, want in zip("qkv", grads, ref_grads):
            assert (unshard(got, layout) - want).abs().max() < TOL, (method, p, causal, layout, f"d{name}")


@pytest.mark.parametrize("method", list(METHODS))
def test_two_sp_groups_each_equal_full_attention(method):
    """4 ranks as 2 SP groups of 2 (rings inside groups go through send_recv, all-to-alls use sub-groups)."""
    torch.manual_seed(1)
    q, k, v, d_out = (torch.randn(1, 4, 16, 8) for _ in range(4))
    ref, ref_grads = full_and_grads(q, k, v, d_out, True)
    out, grads, _ = run_sp(method, q, k, v, d_out, p=4, causal=True, layout="zigzag", groups=sp_groups(4, 2),
                           topo=preset("ethernet", 4))
    for rows in (out[:2], out[2:]):
        assert (unshard(rows, "zigzag") - ref).abs().max() < TOL
    for got, want in zip(grads, ref_grads):
        assert (unshard(got[2:], "zigzag") - want).abs().max() < TOL


def test_usp_uses_intra_node_all_to_all_and_inter_node_ring():
    q, k, v, d_out = (torch.randn(1, 4, 32, 8) for _ in range(4))
    _, _, ledger = run_sp("usp", q, k, v, d_out, p=8, causal=True, layout="contiguous")
    table = ledger.table()
    a2a = table[table.op == "all_to_all"]
    ring = table[table.op == "shift"]
    assert len(a2a) == 4 and (a2a.bytes_inter == 0).all() and (a2a.bytes_intra > 0).all()
    assert len(ring) > 0 and (ring.bytes_intra == 0).all() and (ring.bytes_inter > 0).all()


def test_zigzag_balances_causal_work_and_contiguous_does_not():
    p, n = 4, 64
    work = {}
    for layout in ("contiguous", "zigzag"):
        pos = positions(n, p, layout)
        work[layout] = [int((pos[r][:, None] >= torch.cat(list(pos))[None, :]).sum()) for r in range(p)]
    assert len(set(work["zigzag"])) == 1
    assert max(work["contiguous"]) > 4 * min(work["contiguous"])


def test_merge_of_partials_equals_attention_over_their_union():
    q, k, v = (torch.randn(1, 1, 2, 6, 4) for _ in range(3))
    k2, v2 = torch.randn(1, 1, 2, 5, 4), torch.randn(1, 1, 2, 5, 4)
    out, lse = merge(*block_attention(q, k, v), *block_attention(q, k2, v2))
    want, want_lse = block_attention(q, torch.cat([k, k2], -2), torch.cat([v, v2], -2))
    assert (out - want).abs().max() < 1e-6 and (lse - want_lse).abs().max() < 1e-6


def test_shard_and_unshard_round_trip():
    x = torch.arange(2 * 24).view(2, 24, 1).float()
    for layout in ("contiguous", "zigzag"):
        assert torch.equal(unshard(shard(x, 3, layout), layout), x)
    assert shard(x, 3, "zigzag")[0, 0, :, 0].tolist() == [0, 1, 2, 3, 20, 21, 22, 23]


@pytest.mark.parametrize("bad, match", [
    (dict(method="nope"), "sp_method='nope' is invalid"),
    (dict(layout="diagonal"), "layout='diagonal' is invalid"),
    (dict(causal=1), "causal=1 is invalid"),
    (dict(method="ulysses", heads=3), "not divisible"),
    (dict(layout="zigzag", seq=12), "expected a multiple of 8"),
    (dict(nan=True), "NaN or inf"),
    (dict(groups=[[0, 1], [2]]), "groups=.* is invalid"),
])
def test_bad_input_is_refused(bad, match):
    h, n = bad.pop("heads", 4), bad.pop("seq", 16)
    x = torch.randn(4, 1, h, n // 4, 8)
    if bad.pop("nan", False):
        x[0, 0, 0, 0, 0] = float("nan")
    kw = dict(method="ring", causal=False, layout="contiguous") | bad
    with pytest.raises(ValueError, match=match):
        sp_attention(x, x.clone(), x.clone(), collective=SimulatedCollective(world_size=4,
                     ledger=Ledger(preset("ethernet", 4))), **kw)
