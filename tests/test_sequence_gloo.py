"""Every sequence-parallel method on 4 real gloo processes (one spawn for all): forward and backward equal
full attention (or LASP's linear attention) within 1e-5 in fp32, and every rank's Ledger equals the
simulated run's. USP runs on 2 nodes × 2 ranks (an intra-node all-to-all sub-group, an inter-node ring)."""
from __future__ import annotations

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.sequence.distributed_run import Case, case_inputs, run_case, run_on_gloo
from lab.sequence.kernels import attention
from lab.sequence.lasp import linear_attention, slopes
from lab.sequence.layout import unshard
from lab.topology import preset

P = 4
SHAPE = dict(batch=2, heads=4, seq=32, head_dim=8)
CASES = [Case("ring", True, "zigzag"), Case("ring", False), Case("token_ring", True), Case("ulysses", True),
         Case("usp", True), Case("burst", True, "zigzag"), Case("lss", True), Case("lasp")]
TOPOLOGY = "leaf_spine"


@pytest.mark.gloo
@pytest.mark.slow
def test_all_methods_on_gloo_equal_full_attention_and_the_simulated_ledger():
    results = run_on_gloo(CASES, world_size=P, shape=SHAPE, topology=TOPOLOGY)
    for case, res in zip(CASES, results):
        q, k, v, d_out = (t.requires_grad_() for t in case_inputs(case, world_size=P, seed=0, **SHAPE))
        ref = linear_attention(q, k, v, slopes(SHAPE["heads"])) if case.method == "lasp" else attention(
            q, k, v, causal=case.causal)
        grads = torch.autograd.grad(ref, (q, k, v), d_out.detach())
        got = [unshard(res[name], case.layout) for name in ("out", "dq", "dk", "dv")]
        for g, want in zip(got, (ref.detach(), *grads)):
            assert ((g - want).abs() <= 1e-5 + 1e-5 * want.abs()).all(), case
        sim = Ledger(preset(TOPOLOGY, P))
        run_case(case, SimulatedCollective(world_size=P, ledger=sim), world_size=P, shape=SHAPE, seed=0)
        assert all(t.equals(sim.table()) for t in res["ledgers"]), case
