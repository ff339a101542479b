"""What each error-feedback variant guarantees, on heterogeneous clients whose optima differ.

The spec's float64 quadratics (tests/quadratics.py: N = 10 clients, d = 20, f_i = ½ (x − b_i)ᵀ H_i (x − b_i)),
distributed gradient descent on full gradients, step 0.05, 1000 steps, each client's gradient through top-1
(δ = k/d = 0.05) and the wrapper under test; the average of the decoded messages is applied (no collective: the
wrapper's contract alone). Measured ||x − x*||: EF14 ≈ 1.5 (it stalls), EF21 ≈ 2e-15, EControl with its default
η = δ ≈ 7e-15, EControl with the old default η = 0.1 = 2δ ≈ 47 and growing.
"""
import warnings

import pytest
import torch
from quadratics import problem

from lab.compress import EControl, TopK, make_compressor, make_feedback
from lab.compress.error_feedback import default_eta

HS, BS, XSTAR = problem()


def distance_after_gd(fb, *, steps: int = 1000, lr: float = 0.05) -> float:
    comp = fb.compressor
    x = torch.zeros(HS.shape[1], dtype=torch.float64)
    for _ in range(steps):
        g = HS * (x - BS)  # (N, d) full gradients at the shared x
        p = fb.prepare(g)
        local = comp.decompress(comp.compress(p))  # (N, d) what the receiver decodes of each client
        agg = local.mean(0)
        fb.commit(p, local, agg)
        x = x - lr * fb.output(agg)
    return float((x - XSTAR).norm())


def test_ef14_stalls_when_the_clients_optima_differ_while_ef21_converges():
    assert distance_after_gd(make_feedback("ef", TopK(k=1))) > 0.5
    assert distance_after_gd(make_feedback("ef21", TopK(k=1))) < 1e-12


def test_econtrol_default_eta_is_the_contraction_and_converges():
    fb = make_feedback("econtrol", TopK(k=1))  # econtrol_eta = 0: the compressor's δ
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default raises no warning
        assert distance_after_gd(fb) < 1e-12
    assert fb.eta == pytest.approx(1 / 20)


def test_econtrol_eta_above_the_contraction_warns_and_diverges_here():
    fb = EControl(TopK(k=1), eta=0.1)
    with pytest.warns(RuntimeWarning, match=r"econtrol_eta=0.1 exceeds the contraction δ=0.05"):
        dist = distance_after_gd(fb)
    assert dist > 10  # the fresh d = 20 instance: η > k/d diverges


def test_default_eta_per_compressor():
    d = 1000
    assert default_eta(TopK(ratio=0.1), d) == pytest.approx(TopK(ratio=0.1).k_for(d) / d)
    randk = make_compressor("randk", ratio=0.1, scaled=False)  # inside error feedback: contractive, δ = k/d
    assert default_eta(randk, d) == pytest.approx(randk.contraction(d))
    qsgd = make_compressor("qsgd", ratio=0.25)  # unbiased: δ of C/(1 + ω)
    assert default_eta(qsgd, d) == pytest.approx(1 / (1 + qsgd.variance(d)))
    shapes = [(20, 30), (30,)]
    psgd = make_compressor("powersgd", ratio=0.2, shapes=shapes)
    assert default_eta(psgd, 630) is None
    fb = make_feedback("econtrol", psgd)
    with pytest.warns(RuntimeWarning, match="unknown; using econtrol_eta=0.1"):
        fb.prepare(torch.zeros(2, 630))
    assert fb.eta == 0.1


def test_eta_zero_in_the_class_is_ef21_and_bad_eta_is_refused():
    a = distance_after_gd(EControl(TopK(k=1), eta=0.0), steps=50)
    b = distance_after_gd(make_feedback("ef21", TopK(k=1)), steps=50)
    assert a == b
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="econtrol_eta="):
            EControl(TopK(k=1), eta=bad)
