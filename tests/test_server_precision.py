"""A federated server sums in float64: aggregation weights and control variates do not lose what the run's dtype keeps.

On the spec's float64 quadratics (tests/quadratics.py: N = 10, d = 20, K = 10, lr 0.02) SCALLION with α = 1 and no
compression is SCAFFOLD in one vector; with float32 server sums it stalled at ||x − x*|| ≈ 3e-7 (its c drifts
away from the mean of the clients' c_i and nothing pulls it back), with float64 sums it reaches 1e-15 like SCAFFOLD.
"""
import torch
from quadratics import distance_after, make_context, problem

from lab.comm.collective import ordered_sum
from lab.compress import make_compressor
from lab.experiment import ExperimentConfig
from lab.registry import technique


def test_scallion_without_compression_reaches_scaffolds_precision():
    hs, bs, xstar = problem()
    quad = dict(hs=hs, bs=bs, xstar=xstar)
    scallion = distance_after("scallion", 100, compressor="none", cv_alpha=1.0, **quad)
    scaffold = distance_after("scaffold", 100, **quad)
    assert scallion < 1e-12 and scaffold < 1e-12  # measured: 1.4e-15 and 3.2e-15


def test_fedavg_weights_and_sum_keep_float64_in_a_float64_run():
    hs, bs, _ = problem()
    cfg = ExperimentConfig(technique="fedavg", num_workers=10, local_steps=3, lr=0.02, topology="phones", rounds=1)
    ctx = make_context(cfg, hs, bs)
    tech = technique("fedavg")(cfg)
    tech.setup(ctx)
    tech.round(ctx)
    clients = ctx.cluster.params.detach()  # (10, d) float64 models after local training
    exact = clients.sum(0) / 10  # equal data sizes: the plain float64 mean
    assert tech.global_row.dtype == torch.float64
    # float32 weights (0.1 rounded) left a relative error near 1e-8; float64: rounding of the sum only
    assert torch.allclose(tech.global_row, exact, rtol=1e-15, atol=1e-15)


def test_float64_weights_keep_a_float32_sum_exact_to_one_rounding():
    rows = torch.tensor([[1.0], [2.0 ** -24], [2.0 ** -24]])  # fp32: 1 + 2^-24 rounds back to 1, twice
    assert float(ordered_sum(rows, torch.ones(3))) == 1.0  # fp32 accumulation loses both halves
    wide = ordered_sum(rows, torch.ones(3, dtype=torch.float64))
    assert wide.dtype == torch.float32 and float(wide) == 1.0 + 2.0 ** -23  # summed in float64, rounded once


def test_a_compressed_uplink_aggregate_follows_the_weights_dtype():
    comp = make_compressor("none")
    decoded = torch.tensor([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])  # fp32 messages
    w = torch.full((3,), 0.1, dtype=torch.float64)
    agg = comp.aggregate(decoded, w)
    assert agg.dtype == torch.float64
    assert torch.equal(agg, (decoded.double() * 0.1).sum(0))
    assert comp.aggregate(decoded, w.float()).dtype == torch.float32
