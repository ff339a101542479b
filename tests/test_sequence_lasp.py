"""LASP (linear attention, K/V state passed down a chain of ranks) equals the single-device masked-decay
formula, forward and backward: |diff| <= 1e-5 + 1e-5·|value| in fp32 (spec §0.3 E1)."""
from __future__ import annotations

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.lasp import lasp_attention, linear_attention, slopes
from lab.sequence.layout import shard, sp_groups, unshard
from lab.topology import preset


def close(a, b):
    return bool(((a - b).abs() <= 1e-5 + 1e-5 * b.abs()).all())


@pytest.mark.parametrize("p", [2, 4, 8])
def test_lasp_equals_linear_attention(p):
    torch.manual_seed(p)
    b, h, n, d, e = 2, 4, 48, 8, 6
    q, k = ((torch.randn(b, h, n, d) * d**-0.5).requires_grad_() for _ in range(2))
    v = torch.randn(b, h, n, e, requires_grad=True)
    ref = linear_attention(q, k, v, slopes(h))
    d_out = torch.randn_like(ref)
    grads = torch.autograd.grad(ref, (q, k, v), d_out)
    coll = SimulatedCollective(world_size=p, ledger=Ledger(preset("ethernet", p)))
    qs, ks, vs = (shard(t.detach(), p).requires_grad_() for t in (q, k, v))
    out = lasp_attention(qs, ks, vs, collective=coll)
    out.backward(shard(d_out, p))
    assert close(unshard(out.detach()), ref.detach())
    for got, want in zip((qs.grad, ks.grad, vs.grad), grads):
        assert close(unshard(got), want)


def test_lasp_in_two_sp_groups():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 4) * 0.5 for _ in range(3))
    ref = linear_attention(q, k, v, slopes(2))
    coll = SimulatedCollective(world_size=4, ledger=Ledger(preset("ethernet", 4)))
    out = lasp_attention(*(shard(t, 2).repeat(2, 1, 1, 1, 1) for t in (q, k, v)), collective=coll,
                         groups=sp_groups(4, 2))
    assert close(unshard(out[:2]), ref) and close(unshard(out[2:]), ref)


def test_lasp_refuses_bad_decay_and_nan():
    coll = SimulatedCollective(world_size=2, ledger=Ledger(preset("ethernet", 2)))
    x = torch.randn(2, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="decay"):
        lasp_attention(x, x, x, collective=coll, decay=torch.tensor([0.1, -1.0]))
    x[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        lasp_attention(x, x, x, collective=coll)
