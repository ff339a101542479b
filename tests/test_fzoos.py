"""FZooS and its baseline FedZO: the trajectory surrogate's gradient and uncertainty, the shared random features,
what each round sends and queries, the acceptance step, and FZooS ahead of FedZO at equal queries on a
heterogeneous quadratic under the protocol of FZooS's experiments."""
import math

import torch
import torch.nn.functional as F

from lab.config import config_for
from lab.experiment import build_context, run
from lab.zeroth_order.fedzo import sphere
from lab.zeroth_order.fzoos import GP, RandomFeatures

#: the lab's heterogeneous quadratic: 5 clients, each holding one group of `lstsq` (its own optimum), d = 21
QUADRATIC = dict(dataset="lstsq", model="linear", num_workers=5, partition="shards", shards_per_worker=1)


def quick(technique, **kw):
    return run(config_for(technique, **{**QUADRATIC, "eval_every": 1, **kw}), save=False, progress=False)


def test_the_trajectory_surrogate_points_downhill_and_knows_where_it_is_unsure():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    x0 = torch.zeros(5, dtype=torch.float64)
    pts = torch.cat([x0.unsqueeze(0), 0.3 * torch.randn(40, 5, generator=g, dtype=torch.float64)])
    gp = GP(pts, ((pts - c) ** 2).sum(1))
    assert float(F.cosine_similarity(gp.grad(x0), 2 * (x0 - c), dim=0)) > 0.9
    far = x0 + 100.0
    unsure = gp.grad_uncertainty(torch.stack([x0, pts[5], far]))
    assert unsure[0] < 0.1 * unsure[2] and unsure[1] < 0.1 * unsure[2]  # queried points are well known
    assert math.isclose(float(unsure[2]), 5 / gp.ell ** 2, rel_tol=1e-6)  # far away: the prior's d / l^2


def test_random_feature_gradient_is_the_gradient_of_the_fitted_surrogate():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(40, 5, generator=g, dtype=torch.float64)
    vals = ((pts - 0.5) ** 2).sum(1)
    rff = RandomFeatures(64, 5, seed=0)
    nu = rff.fit(pts, vals)
    assert float((rff.features(pts) @ nu - vals).abs().max()) < 1e-6  # 64 features interpolate 40 points
    x = torch.rand(5, generator=g, dtype=torch.float64)
    fd = torch.stack([(rff.features((x + 1e-6 * e).unsqueeze(0)) - rff.features((x - 1e-6 * e).unsqueeze(0)))[0]
                      @ nu / 2e-6 for e in torch.eye(5, dtype=torch.float64)])
    assert torch.allclose(rff.grad(nu, x), fd, rtol=1e-4, atol=1e-6)
    assert torch.equal(RandomFeatures(64, 5, seed=0).w, rff.w)  # shared by every client from the seed


def test_fzoos_sends_models_values_and_features_and_counts_every_query():
    features, steps = 50, 3
    r = quick("fzoos", rounds=2, local_steps=steps, fzoos_features=features, fzoos_candidates=20)
    led, d = r.ledger, 21
    sizes = {tag: set(led[led.tag == tag].payload_bytes) for tag in set(led.tag)}
    assert sizes["model+value"] == {4 * d + 4} and sizes["candidate"] == {4 * d} and sizes["model"] == {4 * d}
    assert sizes["value"] == {4} and sizes["accept"] == {1}
    assert sizes["surrogate"] == {4 * features + 8, 4 * features}  # up: weights and target range; down: the mean
    per_round = 1 + steps + 5 * (steps - 1) + 1 + 50  # start, path, exploration, x', the surrogate's design
    assert r.metrics.queries.tolist() == [5 * (10 + per_round), 5 * (10 + 2 * per_round)]
    plain = quick("fzoos", rounds=2, local_steps=steps, fzoos_features=features, fzoos_candidates=20,
                  fzoos_accept=False)
    assert not {"value", "accept"} & set(plain.ledger.tag) and plain.metrics.accepted.all()


def test_the_acceptance_step_never_keeps_a_model_the_clients_find_worse():
    r = quick("fzoos", rounds=4, local_steps=10, fzoos_features=200)
    m = r.metrics
    kept = m.eval_loss.diff()[~m.accepted].dropna()
    assert (~m.accepted).any() and (kept == 0).all()  # a rejected round leaves the model as it was


def test_fedzo_estimates_gradients_from_function_values_and_sends_what_fedavg_sends():
    gen = torch.Generator().manual_seed(0)
    v = sphere(20_000, 3, gen)
    assert torch.allclose(v.norm(dim=1), torch.ones(20_000, dtype=torch.float64))
    assert float((3 * v.T @ v / 20_000 - torch.eye(3, dtype=torch.float64)).abs().max()) < 0.03  # E[d v v^T] = I
    r = quick("fedzo", rounds=3, local_steps=4, lr=0.05)
    assert r.metrics.queries.tolist() == [5 * 4 * 21 * k for k in (1, 2, 3)]  # (b + 1) queries per step
    d = r.model.numel()
    assert set(r.ledger.payload_bytes) == {4 * d}
    ctx, data = build_context(config_for("fedzo", **QUADRATIC))
    start = ctx.spec.metrics_fn(ctx.cluster.evaluate(ctx.cluster.params.detach()[0], data.x_test), data.y_test)
    assert r.summary()["eval_loss"] < 0.8 * start["eval_loss"]  # measured: 34.2 -> 21.5


def test_fzoos_beats_fedzo_at_equal_queries_on_a_heterogeneous_quadratic():
    # FZooS's experiments run the FedZO/RGF baseline (no correction) with FZooS's own Adam step: 0.01 in the
    # unit box FZooS searches, which is 0.2 in parameter units here (the box's half-width is 10).
    fzoos = quick("fzoos", rounds=2, local_steps=10, fzoos_features=1000)
    fedzo = quick("fedzo", rounds=2, local_steps=5, optimizer="adamw", lr=0.2)
    q_fz, q_zo = fzoos.metrics.queries.tolist(), fedzo.metrics.queries.tolist()
    assert q_zo[-1] <= q_fz[-1] and q_zo[0] <= q_fz[0]  # FedZO gets at most as many queries, round by round
    # measured: FZooS 21.72 after 585 queries and 21.50 after 1120; FedZO 26.55 after 525, 23.58 after 1050
    # (start 34.7; the least-squares optimum's test loss is 21.07). A tuned SGD FedZO (lr 0.1) reaches
    # 21.89 and 20.89: the claim holds under the paper's protocol, not against every tuning.
    assert (fzoos.metrics.eval_loss.to_numpy() < fedzo.metrics.eval_loss.to_numpy()).all()
    assert fzoos.summary()["eval_loss"] < fedzo.summary()["eval_loss"] - 1.0
