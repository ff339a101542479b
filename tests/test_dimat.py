"""DIMAT: activation matching recovers a permutation, beats plain averaging of independently trained agents."""
import torch

from lab.experiment import ExperimentConfig, build_context, run
from lab.sync.dimat import hidden, match_units, merge, permute


def test_matching_undoes_a_permutation_of_hidden_units_exactly():
    cfg = ExperimentConfig(technique="dimat", num_workers=2)
    ctx, data = build_context(cfg)
    cl = ctx.cluster
    row = cl.params.detach()[0]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    q = permute(cl.unflatten(row), perm)
    shuffled = torch.cat([q[n].reshape(-1) for n in cl.names])
    x = data.x_train[:256]
    assert torch.equal(cl.evaluate(shuffled, x), cl.evaluate(row, x)) or torch.allclose(
        cl.evaluate(shuffled, x), cl.evaluate(row, x), atol=1e-5)  # the same function
    found = match_units(hidden(cl.unflatten(row), x), hidden(q, x))
    assert torch.equal(q["fc1.bias"][found], cl.unflatten(row)["fc1.bias"])
    aligned = merge(cl, row, [shuffled], [0.5, 0.5], x, align=True)
    assert torch.allclose(aligned, row, atol=1e-6)
    assert not torch.allclose(merge(cl, row, [shuffled], [0.5, 0.5], x, align=False), row, atol=1e-3)


def test_first_merge_of_independent_agents_is_better_aligned_than_averaged():
    acc = {}
    for match in ("activation", "none"):
        r = run(ExperimentConfig(technique="dimat", num_workers=2, steps=100, sync_period=100, dimat_matching=match,
                                 lr=0.1, eval_every=100), save=False, progress=False)
        acc[match] = r.metrics.agent_accuracy.iloc[-1]
    assert acc["activation"] > acc["none"] + 0.05


def test_ring_sends_each_model_to_both_neighbours():
    r = run(ExperimentConfig(technique="dimat", num_workers=4, steps=20, sync_period=10, eval_every=20),
            save=False, progress=False)
    d = r.model.numel()
    assert r.summary()["bytes"] == 2 * 2 * 4 * 4 * d  # rounds x shifts x agents x model bytes
