"""FedVote: packed binary/ternary votes, the soft vote, and credibility-weighted voting against sign flippers."""
import math

import torch

from lab.experiment import ExperimentConfig, build_context, run
from lab.sync.fedvote import CLIP, FedVote

COMMON = dict(num_workers=10, rounds=8, local_steps=15, eval_every=8, topology="phones", lr=0.05)


def quick(**kw):
    return run(ExperimentConfig(**kw), save=False, progress=False)


def test_uplink_is_one_bit_per_weight_binary_and_two_ternary():
    binary = quick(technique="fedvote", **{**COMMON, "rounds": 2})
    ternary = quick(technique="fedvote", fedvote_levels="ternary", **{**COMMON, "rounds": 2})
    d_w = 64 * 64 + 64 * 10  # the MLP's two weight matrices; biases are frozen and never sent
    assert binary.metrics.bytes_uplink.iloc[-1] == 2 * 10 * math.ceil(d_w / 8)
    assert ternary.metrics.bytes_uplink.iloc[-1] == 2 * 10 * 2 * math.ceil(d_w / 8)
    assert binary.metrics.bytes_downlink.iloc[-1] == 2 * 10 * 4 * d_w


def test_one_client_soft_vote_is_an_unbiased_estimate_of_its_tanh_weights():
    cfg = ExperimentConfig(technique="fedvote", num_workers=1, rounds=1, local_steps=1)
    ctx, _ = build_context(cfg)
    fv = FedVote(cfg)
    fv.setup(ctx)
    th = torch.tanh(fv.k * fv.latent[fv.mask])
    draws = torch.stack([torch.where(torch.rand(th.shape, generator=torch.Generator().manual_seed(s)) < (1 + th) / 2,
                                     1.0, -1.0) for s in range(400)])
    fv.server_vote(draws[:1], [0])  # one vote: the soft vote is the vote itself, clipped
    assert torch.allclose(torch.tanh(fv.k * fv.latent[fv.mask]), draws[0].clamp(-CLIP, CLIP), atol=1e-4)
    assert (draws.mean(0) - th).abs().mean() < 0.05  # E[w] = tanh(k h)


def test_sign_flipping_minority_costs_fedvote_under_five_points_and_fedavg_more():
    acc = {}
    for tech, kw in (("fedvote", {}), ("fedavg", {"lr": 0.5})):
        for byz in (0, 3):
            scale = {"byzantine_scale": 4.0} if byz and tech == "fedavg" else {}  # a flipped vote has no scale
            r = quick(technique=tech, byzantine_clients=byz, **scale, **{**COMMON, **kw})
            acc[tech, byz] = r.summary()["eval_accuracy"]
    assert acc["fedvote", 0] > 0.7 and acc["fedavg", 0] > 0.85  # both learn when clean
    assert abs(acc["fedvote", 3] - acc["fedvote", 0]) <= 0.05
    assert acc["fedavg", 0] - acc["fedavg", 3] > 0.05
