"""Shared-seed zeroth-order methods: what they send is seeds and scalars, counted exactly, and they learn.
(FZooS and FedZO: tests/test_fzoos.py.)"""
import torch

from lab.experiment import ExperimentConfig, build_context, run
from lab.zeroth_order.common import candidate_seeds
from lab.zeroth_order.fedkseed import FedKSeed, seed_probabilities
from lab.zeroth_order.ferret import Ferret
from lab.zeroth_order.justonebyte import decode_byte, encode_byte


def initial_eval_loss(cfg):
    ctx, data = build_context(cfg)
    out = ctx.cluster.evaluate(ctx.cluster.params.detach()[0], data.x_test)
    return ctx.spec.metrics_fn(out, data.y_test)["eval_loss"]


def test_candidate_seeds_are_distinct_and_shared():
    s = candidate_seeds(4096, seed=3)
    assert len(set(s.tolist())) == 4096 and torch.equal(s, candidate_seeds(4096, seed=3))


def test_fedkseed_with_4096_seeds_sends_under_18_kb_per_client_and_reduces_the_loss():
    cfg = ExperimentConfig(technique="fedkseed", num_workers=4, rounds=6, local_steps=25, lr=0.005, zo_seeds=4096,
                           eval_every=10_000)
    r = run(cfg, save=False, progress=False)
    up = r.ledger[r.ledger.tag == "seed_scalars"]
    assert len(up) == 6 and (up.op == "server_gather").all()
    assert (up.payload_bytes < 18_000).all()  # per client per round: 25 (int16 index, fp32 scalar) pairs
    assert (up.payload_bytes == 25 * (2 + 4)).all()
    down = r.ledger[r.ledger.tag == "seed_pool"]
    assert (down.payload_bytes == 4 * 4096).all()  # the accumulated pool: 16 KiB
    assert r.summary()["eval_loss"] < initial_eval_loss(cfg) - 0.03


def test_fedkseed_server_model_is_w0_plus_the_seed_pool():
    cfg = ExperimentConfig(technique="fedkseed", num_workers=4, rounds=3, local_steps=5, lr=0.005, zo_seeds=64,
                           client_fraction=0.5, zo_seed_sampling="importance", eval_every=10_000)
    ctx, _ = build_context(cfg)
    tech = FedKSeed(cfg)
    tech.setup(ctx)
    for _ in range(3):
        tech.round(ctx)
        ctx.rounds += 1
    rebuilt = tech.rebuild()
    assert float((rebuilt - tech.global_row).norm() / (tech.global_row - tech.w0).norm()) < 1e-5
    p = seed_probabilities(tech.abs_sum, tech.count)
    assert abs(float(p.sum()) - 1) < 1e-9 and float(p.max()) > float(p.min())  # importance differentiates seeds


def test_one_byte_code_resolution_and_bytes_per_machine():
    g = torch.tensor([1e-3, -0.02, 0.5, -3.0, 40.0, 0.0])
    b = encode_byte(g)
    assert b.dtype == torch.uint8
    back = decode_byte(b)
    assert ((back[:5] - g[:5]).abs() <= 0.07 * g[:5].abs()).all()  # log-scale steps of e^(1/8): < 6.5%
    assert torch.equal(torch.sign(back[:5]), torch.sign(g[:5]))
    base = ExperimentConfig(technique="justonebyte", dataset="lstsq", model="linear", num_workers=4, steps=20,
                            lr=0.05, zo_samples=3, eval_every=10_000)
    byte, fp32 = (run(base.replace(zo_scalar_format=f), save=False, progress=False) for f in ("int8", "fp32"))
    sent = byte.ledger[byte.ledger.tag == "scalars"]
    assert len(sent) == 20 and (sent.payload_bytes == 3).all()  # S bytes per machine per iteration
    assert (fp32.ledger[fp32.ledger.tag == "scalars"].payload_bytes == 12).all()
    init = initial_eval_loss(base)
    a, b_ = byte.summary()["eval_loss"], fp32.summary()["eval_loss"]
    assert a < init and b_ < init and abs(a - b_) < 0.1 * (init - min(a, b_))  # nearly the same curve


def test_ferret_reconstruction_improves_with_more_seeds():
    cfg = ExperimentConfig(technique="ferret", num_workers=2)
    ctx, _ = build_context(cfg)
    errs = []
    delta = torch.randn(ctx.cluster.dim, generator=torch.Generator().manual_seed(0))
    for k in (25, 100, 400):
        tech = Ferret(cfg.replace(ferret_seeds=k))
        tech.setup(ctx)
        coefs, idx, counts = tech.encode(delta, torch.Generator().manual_seed(1))
        hat = 3 * tech.decode(coefs, idx, counts, ctx.cluster.dim)  # E[v vᵀ] = I / (3 d_g)
        errs.append(float((hat - delta).norm() / delta.norm()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.6 * errs[1] and errs[1] < 0.6 * errs[0]  # about 1/sqrt(K): 1/sqrt(8) = 0.35


def test_ferret_sends_coefficients_indices_and_counts_and_learns():
    cfg = ExperimentConfig(technique="ferret", dataset="lstsq", model="linear", num_workers=4, rounds=4,
                           local_steps=5, lr=0.05, eval_every=10_000)
    r = run(cfg, save=False, progress=False)
    up = r.ledger[r.ledger.tag == "projections"]
    # groups: the 20 weights cut into chunks of ceil(0.9 x median(20, 1)) = 10, and the bias: G = 3;
    # W coefficients (fp32) + W seed indices (int16) + G counts (int16), W = the longest client's sum of n_g
    w = (up.payload_bytes - 2 * 3) / (4 + 2)
    assert (w == w.round()).all() and (w >= 3 * 2).all() and (w <= 3 * 200).all()
    assert list(up.payload_bytes) == list(r.metrics.uplink_bytes_per_client)
    assert r.summary()["eval_loss"] < 0.8 * initial_eval_loss(cfg)
