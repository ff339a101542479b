"""QSR: the recorded sync periods follow the quadratic rule applied to the recorded learning rates."""
import math

import pytest
import torch

from lab import registry
from lab.experiment import ExperimentConfig, run
from lab.schedule import lr_at
from lab.sync.qsr import qsr_period

BASE = dict(num_workers=4, steps=120, sync_period=2, lr=0.1, lr_schedule="cosine", eval_every=120)


def quick(**kw):
    return run(ExperimentConfig(**{**BASE, **kw}), save=False, progress=False)


@pytest.fixture(scope="module")
def qsr_run():
    return quick(technique="qsr", qsr_alpha=0.03)


def test_trace_of_h_equals_the_rule_applied_to_the_recorded_learning_rates(qsr_run):
    m = qsr_run.metrics
    before = [0] + m.step.tolist()[:-1]  # the step each round started at
    for start, h, lr, end in zip(before, m.sync_period, m.lr, m.step):
        assert lr == pytest.approx(lr_at(start, base_lr=0.1, schedule="cosine", total_steps=120), rel=1e-12)
        expected = min(max(2, math.floor((0.03 / lr) ** 2)), 120 - start)
        assert h == expected and end == start + h
    assert m.step.iloc[-1] == 120
    # the rule did something: H grows from H_base as the learning rate decays, and syncs become rare
    assert m.sync_period.iloc[0] == 2 and m.sync_period.max() > 8
    assert m.sync_period.is_monotonic_increasing
    late = m[m.step > 80]
    assert len(late) / 40 < 1 / 4  # fewer than one sync per 4 steps in the last third, against 1/2 at first


def test_sync_bytes_follow_the_number_of_syncs(qsr_run):
    m = qsr_run.metrics
    per_sync = m.bytes.iloc[0]
    assert m.bytes.iloc[-1] == per_sync * len(m)


def test_alpha_zero_is_constant_h_local_sgd():
    a = quick(technique="qsr", qsr_alpha=0.0, steps=40)
    b = quick(technique="local_sgd", steps=40)
    assert torch.equal(a.model, b.model)
    assert (a.metrics.sync_period == 2).all()


def test_warmup_keeps_h_base_and_the_cap_ends_at_the_last_step():
    assert qsr_period(1e-4, alpha=0.1, h_base=4, step=5, warmup_steps=10, remaining=100) == 4
    assert qsr_period(1e-4, alpha=0.1, h_base=4, step=50, warmup_steps=10, remaining=30) == 30
    assert qsr_period(0.05, alpha=0.1, h_base=2, step=50, warmup_steps=10, remaining=100) == 4


def test_power_of_two_schedule_makes_h_piecewise_constant():
    r = quick(technique="qsr", qsr_alpha=0.03, lr_schedule="cosine_pow2", steps=80)
    lrs = r.metrics.lr
    assert all(math.log2(v) == round(math.log2(v)) for v in lrs)
    assert r.metrics.sync_period.nunique() < len(r.metrics) / 3


def test_topk_qsr_sends_fewer_bytes_than_dense_qsr_on_the_same_sync_periods():
    dense = quick(technique="qsr", qsr_alpha=0.03, steps=60)
    topk = quick(technique="qsr", qsr_alpha=0.03, steps=60, compressor="topk", compression_ratio=0.1)
    # QSR inherits Local SGD's compressed pseudo-gradients; its period rule does not see the compressor
    assert topk.metrics.sync_period.tolist() == dense.metrics.sync_period.tolist()
    assert topk.summary()["bytes"] <= 0.5 * dense.summary()["bytes"]
    assert (topk.metrics.payload_ratio < 0.25).all()
    assert set(topk.ledger.tag) == {"pseudo_grad"}
    assert "topk r=0.1" in registry.technique("qsr").describe(topk.config)
