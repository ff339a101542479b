"""DiLoCo: identities with Local SGD and the inner optimizer, the outer Nesterov step, compressed outer
gradients, and gloo equivalence."""
import copy

import pytest
import torch

from lab import registry
from lab.experiment import ExperimentConfig, build_context, run
from lab.launch import compare_with_simulated
from lab.sync.diloco import outer_nesterov_

BASE = dict(num_workers=4, steps=40, sync_period=8, optimizer="adamw", lr=3e-3, eval_every=40)
#: an explicit inner SGD with momentum (state kept across rounds), for identities that must not depend on
#: DiLoCo's inner-optimizer defaults
SGD = dict(num_workers=4, steps=40, sync_period=8, optimizer="sgd", momentum=0.9, lr=0.05, eval_every=40)


def quick(**kw):
    return run(ExperimentConfig(**{**BASE, **kw}), save=False, progress=False)


def test_outer_lr_one_momentum_zero_equals_local_sgd_parameter_averaging():
    a = run(ExperimentConfig(technique="diloco", outer_lr=1.0, outer_momentum=0.0, **SGD), save=False, progress=False)
    b = run(ExperimentConfig(technique="local_sgd", **SGD), save=False, progress=False)
    # tolerance 1e-6: averaging θ_g − mean(θ_g − θ_m) instead of mean(θ_m) differs by float association only
    assert torch.allclose(a.model, b.model, atol=1e-6, rtol=0)
    assert torch.allclose(a.worker_params, b.worker_params, atol=1e-6, rtol=0)
    assert a.ledger.payload_bytes.tolist() == b.ledger.payload_bytes.tolist()


def test_one_worker_equals_the_inner_optimizer_alone():
    cfg = ExperimentConfig(technique="diloco", num_workers=1, steps=30, sync_period=7, optimizer="sgd", momentum=0.9,
                           lr=0.05, weight_decay=0.01, outer_lr=1.0, outer_momentum=0.0, eval_every=30)
    r = run(cfg, save=False, progress=False)
    ctx, _ = build_context(cfg)  # the same init and the same batch stream
    model = copy.deepcopy(ctx.spec.module)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(30):
        x, y = ctx.batches.next()
        opt.zero_grad()
        ctx.spec.loss_fn(model(x[0]), y[0]).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert not torch.allclose(flat, ctx.cluster.params[0].detach(), atol=1e-3)  # it trained
    assert torch.allclose(r.model, flat, atol=1e-6, rtol=0)  # momentum kept across the 5 syncs


def test_outer_step_is_torch_sgd_with_nesterov():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(10, generator=g)
    ref = theta.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=True)
    buf = torch.zeros(10)
    for _ in range(5):
        delta = torch.randn(10, generator=g)
        ref.grad = delta.clone()
        opt.step()
        outer_nesterov_(theta, buf, delta, lr=0.7, momentum=0.9)
    assert torch.allclose(theta, ref.detach(), atol=1e-6, rtol=0)


def test_nesterov_outer_step_changes_the_run_but_not_the_bytes():
    a = quick(technique="diloco")
    b = quick(technique="local_sgd")
    assert not torch.allclose(a.model, b.model, atol=1e-3)
    assert a.summary()["bytes"] == b.summary()["bytes"]
    assert a.metrics.loss.iloc[-1] < a.metrics.loss.iloc[0]


@pytest.mark.parametrize("compressor,ratio", [("topk", 0.1), ("int8", 1.0)])
def test_compressed_outer_gradients_send_fewer_bytes_and_still_train(compressor, ratio):
    dense = quick(technique="diloco")
    comp = quick(technique="diloco", compressor=compressor, compression_ratio=ratio)
    assert comp.summary()["bytes"] <= 0.5 * dense.summary()["bytes"]
    assert len(comp.metrics) == len(dense.metrics)  # one exchange per round, as dense
    assert (comp.metrics.payload_ratio < 0.3).all()
    assert comp.metrics.loss.iloc[-1] < comp.metrics.loss.iloc[0]
    assert not torch.equal(comp.model, dense.model)  # the outer step took the decoded mean
    assert compressor in registry.technique("diloco").describe(comp.config)


def test_the_global_model_and_outer_momentum_stay_fp32_and_identical_on_every_worker():
    r = quick(technique="diloco", compressor="int8", steps=16)
    rows = r.worker_params
    assert rows.dtype == torch.float32 and torch.equal(rows, rows[:1].expand_as(rows))
    assert torch.equal(r.model, rows[0])


@pytest.mark.gloo
@pytest.mark.slow
def test_diloco_on_four_gloo_processes_equals_the_simulated_run():
    cfg = ExperimentConfig(technique="diloco", **{**BASE, "steps": 24, "eval_every": 8})
    eq = compare_with_simulated(cfg)
    assert eq.holds(atol=1e-6), eq


@pytest.mark.gloo
@pytest.mark.slow
def test_diloco_with_compressed_outer_gradients_on_gloo_equals_the_simulated_run():
    cfg = ExperimentConfig(technique="diloco", compressor="int8", **{**BASE, "steps": 24, "eval_every": 8})
    eq = compare_with_simulated(cfg, columns=("step", "round", "bytes", "sim_seconds", "payload_ratio",
                                                  "traffic_ratio"))
    assert eq.holds(atol=1e-6), eq  # parameters within 1e-6, identical Ledgers, identical metrics columns
