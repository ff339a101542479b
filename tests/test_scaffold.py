"""SCAFFOLD, SCALLION, SCAFCOM and FedProx: client drift on the spec's heterogeneous quadratics, and bytes."""
import pytest
import torch
from quadratics import distance_after, problem

from lab.experiment import ExperimentConfig, run


@pytest.fixture(scope="module")
def quad():
    hs, bs, xstar = problem()  # spec Appendix A.2: N = 10, d = 20, K = 10, lr 0.02, full participation
    assert float(xstar.norm()) == pytest.approx(3.876, abs=1e-3)
    return dict(hs=hs, bs=bs, xstar=xstar)


def test_fedavg_stalls_away_from_the_optimum_while_scaffold_converges(quad):
    fedavg = distance_after("fedavg", 60, **quad)
    scaffold = distance_after("scaffold", 60, **quad)
    assert fedavg > 0.1  # client drift: the spec's [SIM] gives 0.39 after 300 rounds
    assert scaffold < 1e-6
    assert distance_after("fedavg", 90, **quad) == pytest.approx(fedavg, rel=1e-3)  # stalled, not slow


def test_scaffold_converges_under_partial_participation(quad):
    assert distance_after("scaffold", 100, client_fraction=0.3, **quad) < 1e-6


def test_single_vector_form_with_no_compression_equals_scaffold(quad):
    a = distance_after("scaffold", 20, **quad)
    b = distance_after("scallion", 20, compressor="none", cv_alpha=1.0, **quad)
    assert a > 1e-4 and abs(a - b) < 1e-6  # still converging, and equal up to the fp32 payload on the wire


def test_scallion_with_random_k_converges_only_with_a_damped_control_variate_step(quad):
    # random-k 25% with the shared seed: omega = 3, so alpha = 1/(1 + omega) = 1/4 by default
    damped = distance_after("scallion", 120, compressor="randk", compression_ratio=0.25, **quad)
    undamped = distance_after("scallion", 60, compressor="randk", compression_ratio=0.25, cv_alpha=1.0, **quad)
    assert damped < 1e-2
    assert undamped > 10 * float(quad["xstar"].norm())  # the spec's [SIM]: alpha = 1 diverges


def test_scafcom_converges_with_biased_top_k_and_momentum(quad):
    assert distance_after("scafcom", 80, compressor="topk", compression_ratio=0.25, **quad) < 1e-6
    assert distance_after("scafcom", 80, compressor="topk", compression_ratio=0.5, scafcom_beta=0.5, **quad) < 1e-6


def test_scallion_refuses_a_biased_compressor():
    with pytest.raises(ValueError, match="compressor='topk' is invalid: "
                                         "expected an unbiased compressor for technique='scallion'"):
        run(ExperimentConfig(technique="scallion", compressor="topk", num_workers=4, rounds=1), save=False,
            progress=False)


def test_uplink_bytes_two_vectors_for_scaffold_one_compressed_for_scallion():
    base = dict(num_workers=6, rounds=2, client_fraction=0.5, partition="dirichlet", local_steps=5, topology="phones")
    sc = run(ExperimentConfig(technique="scaffold", **base), save=False, progress=False)
    sl = run(ExperimentConfig(technique="scallion", compressor="randk", compression_ratio=0.1, **base), save=False,
             progress=False)
    d = sc.model.numel()
    assert sc.metrics.bytes_uplink.iloc[-1] == 2 * 3 * 8 * d  # rounds x clients x (dy, dc)
    assert sc.metrics.bytes_downlink.iloc[-1] == 2 * 3 * 8 * d  # x and c
    k = int((0.1 * 4 * d - 8) // 4)
    assert sl.metrics.bytes_uplink.iloc[-1] == 2 * 3 * (4 * k + 8)  # k values + the 8-byte seed
    assert sl.metrics.payload_ratio.iloc[-1] <= 0.1 and sl.metrics.traffic_ratio.iloc[-1] <= 0.1  # the uplink
    assert (sl.metrics.num_participants == 3).all()


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_clients_towards_the_global_model():
    base = dict(num_workers=6, rounds=2, partition="dirichlet", dirichlet_alpha=0.3, local_steps=8)
    avg = run(ExperimentConfig(technique="fedavg", **base), save=False, progress=False)
    prox0 = run(ExperimentConfig(technique="fedprox", prox_mu=0.0, **base), save=False, progress=False)
    assert torch.allclose(avg.model, prox0.model, atol=1e-7)
    spread = {}
    for mu in (0.0, 1.0):
        r = run(ExperimentConfig(technique="fedprox", prox_mu=mu, **{**base, "rounds": 1}), save=False,
                progress=False)
        spread[mu] = float((r.worker_params - r.model).norm(dim=1).mean())  # how far clients drifted
    assert spread[1.0] < 0.8 * spread[0.0]
