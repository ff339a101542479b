"""FedAvg's server step is the data-size-weighted average of the sampled clients' models."""
import torch

from lab.experiment import ExperimentConfig, build_context
from lab.sync.fedavg import FedAvg, sample_clients


def test_aggregation_equals_hand_computed_weighted_average():
    cfg = ExperimentConfig(technique="fedavg", num_workers=5, client_fraction=0.6, partition="dirichlet",
                           dirichlet_alpha=0.3, batch_size=8, rounds=1)
    ctx, _ = build_context(cfg)
    fed = FedAvg(cfg)
    fed.setup(ctx)
    sampled = sample_clients(5, 0.6, seed=cfg.seed, round_index=0)
    assert len(sampled) == 3
    fed.round(ctx)
    y = ctx.cluster.params.detach()  # clients' returned models
    n = torch.tensor([float(ctx.batches.shard_size(r)) for r in range(5)])
    assert len(set(n[sampled].tolist())) > 1  # unequal sizes, so weighting matters
    expected = sum(n[i] * y[i] for i in sampled) / n[sampled].sum()
    assert torch.allclose(fed.global_row, expected, atol=1e-6)
    uniform = sum(y[i] for i in sampled) / 3
    assert not torch.allclose(fed.global_row, uniform, atol=1e-4)


def test_clients_with_more_data_take_more_local_steps():
    cfg = ExperimentConfig(technique="fedavg", num_workers=4, partition="dirichlet", dirichlet_alpha=0.2,
                           batch_size=10, local_epochs=2)
    ctx, _ = build_context(cfg)
    fed = FedAvg(cfg)
    fed.setup(ctx)
    for r in range(4):
        assert fed.local_steps(r) == 2 * -(-ctx.batches.shard_size(r) // 10)


def test_client_sampling_is_a_pure_function_of_seed_and_round():
    assert sample_clients(100, 0.1, seed=3, round_index=7) == sample_clients(100, 0.1, seed=3, round_index=7)
    assert sample_clients(100, 0.1, seed=3, round_index=7) != sample_clients(100, 0.1, seed=3, round_index=8)
    assert len(sample_clients(100, 0.001, seed=0, round_index=0)) == 1
