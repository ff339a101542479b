"""DSP: a spatial + temporal block with the sharded dimension switched by one all-to-all each way equals
the single-device block, forward and backward (1e-5, fp32)."""
from __future__ import annotations

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.dsp import dsp_block, dsp_reference, switch, switch_back
from lab.sequence.layout import shard, unshard
from lab.topology import preset


def coll(p):
    return SimulatedCollective(world_size=p, ledger=Ledger(preset("ethernet", p)))


@pytest.mark.parametrize("p", [2, 4, 8])
def test_dsp_equals_single_device(p):
    torch.manual_seed(p)
    x = torch.randn(2, 16, 8, 16, requires_grad=True)  # (B, T, S, h)
    ref = dsp_reference(x, num_heads=4)
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(ref, x, g)
    xs = shard(x.detach(), p, dim=1).requires_grad_()
    out = dsp_block(xs, collective=coll(p), num_heads=4)
    out.backward(shard(g, p, dim=1))
    assert (unshard(out.detach(), dim=1) - ref.detach()).abs().max() < 1e-5
    assert (unshard(xs.grad, dim=1) - gx).abs().max() < 1e-5


def test_switch_round_trip_and_layout():
    p = 4
    x = torch.randn(1, 8, 8, 3)
    xs = shard(x, p, dim=1)
    c = coll(p)
    s_sharded = switch(c, xs)  # (P, B, T, S/P, h): rank j holds spatial positions of chunk j, every frame
    assert torch.equal(s_sharded[1], x[:, :, 2:4])
    assert torch.equal(switch_back(c, s_sharded), xs)


def test_dsp_refuses_indivisible_spatial_size():
    with pytest.raises(ValueError, match="spatial size"):
        dsp_block(torch.randn(4, 1, 2, 6, 8), collective=coll(4), num_heads=2)
