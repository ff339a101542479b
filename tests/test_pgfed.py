"""PGFed: mu = 0 reduces to FedAvg with local fine-tuning; the auxiliary terms, bytes and personal accuracy."""
import torch

from lab.experiment import ExperimentConfig, build_context, run
from lab.sync.pgfed import PGFed

BASE = dict(num_workers=6, rounds=3, client_fraction=0.5, local_steps=6, partition="dirichlet", dirichlet_alpha=0.3,
            lr=0.1, momentum=0.9, batch_size=10, topology="phones", eval_every=1)


def test_mu_zero_gives_fedavg_global_model():
    a = run(ExperimentConfig(technique="fedavg", **BASE), save=False, progress=False)
    b = run(ExperimentConfig(technique="pgfed", pgfed_mu=0.0, **BASE), save=False, progress=False)
    assert torch.allclose(a.model, b.model, atol=1e-6, rtol=0)
    assert b.metrics.personal_accuracy.between(0, 1).all()


def test_auxiliary_gradient_and_weights_use_last_rounds_participants():
    cfg = ExperimentConfig(technique="pgfed", **BASE)
    ctx, _ = build_context(cfg)
    pg = PGFed(cfg)
    pg.setup(ctx)
    pg.round(ctx)
    ctx.rounds += 1
    first = list(pg.last)
    assert len(first) == 3 and pg.grads[first].abs().sum() > 0
    assert torch.equal(pg.alpha[[i for i in range(6) if i not in first]], torch.full((3, 6), 1 / 3))
    pg.round(ctx)
    assert (pg.alpha >= 0).all()
    moved = pg.alpha[pg.last][:, first]
    assert not torch.allclose(moved, torch.full_like(moved, 1 / 3))  # a_ij trained against j in the previous J


def test_bytes_per_round_are_two_to_three_times_fedavg():
    a = run(ExperimentConfig(technique="fedavg", **BASE), save=False, progress=False)
    b = run(ExperimentConfig(technique="pgfed", **BASE), save=False, progress=False)
    d, n = a.model.numel(), 6
    assert b.metrics.bytes_uplink.iloc[-1] == 3 * 3 * (4 * d + 4 * (d + 1 + n))
    assert 2 <= b.summary()["bytes"] / a.summary()["bytes"] <= 3
