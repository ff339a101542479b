"""Compressors keep divergence visible and huge finite values finite (issue 10, item 7).

- a message whose vector holds NaN or ±inf decodes to something non-finite (every registered compressor but
  random-k, whose k sampled coordinates may miss it, and 3SFC, which needs a model), and the other ranks' rows
  stay finite: a diverged sender is seen by its receivers, not clamped into numbers;
- finite values up to fp32's largest decode finite (QSGD's fp32 norm overflowed from about 1e19 and turned them
  into NaN; scaled sign's fp32 mean overflowed near 3e38);
- fp16 keeps ±inf (it clamped them to ±65504) and still saturates finite values there; majority vote's vote is
  NaN where a voter's vector was (it read NaN as +1), for one byte per message.
"""
from __future__ import annotations

import math

import pytest
import torch

from lab.comm import Ledger, SimulatedCollective
from lab.compress import HalfPrecision, MajorityVote, ScaledSign, make_compressor
from lab.compress.qsgd import QSGD
from lab.compress.registry import COMPRESSORS
from lab.topology import preset

D = 300
SHAPES = [(10, 20), (100,)]
PROPAGATING = [c for c in COMPRESSORS if c not in ("randk", "3sfc")]


def rows(value: float, *, at=(7,)) -> torch.Tensor:
    v = torch.randn(2, D, generator=torch.Generator().manual_seed(0))  # (2, D): rank 0 gets `value`
    for i in at:
        v[0, i] = value
    return v


@pytest.mark.parametrize("name", PROPAGATING)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_non_finite_message_decodes_non_finite(name, value):
    c = make_compressor(name, ratio=0.1, shapes=SHAPES, seed=0)
    out = c.decompress(c.compress(rows(value)))  # (2, D)
    assert not torch.isfinite(out[0]).all(), f"{name} hid {value} from the receiver"
    assert torch.isfinite(out[1]).all(), f"{name} spread rank 0's {value} into rank 1's message"


@pytest.mark.parametrize("name", PROPAGATING)
@pytest.mark.parametrize("value", [1e19, 1e30, 3e38, -3e38])
def test_huge_finite_values_decode_finite(name, value):
    c = make_compressor(name, ratio=0.1, shapes=SHAPES, seed=0)
    out = c.decompress(c.compress(rows(value, at=(7, 8, 9))))
    assert torch.isfinite(out).all(), f"{name}: {value} became {out[0, 7:10].tolist()}"


def test_qsgd_norm_does_not_overflow_and_stays_unbiased_in_scale():
    """Values of 1e19..1e30 in one bucket: the fp64 norm is right, the decoded values within norm/s of v."""
    q = QSGD(levels=7, bucket=512, seed=0)
    v = torch.zeros(1, 512)
    v[0, :4] = torch.tensor([1e19, -2e19, 1e30, 5.0])
    p = q.compress(v)
    norm = float(p.tensors["norms"][0, 0])
    assert norm == pytest.approx(float(v.double().norm()), rel=1e-6)
    err = (q.decompress(p) - v).abs()
    assert (err <= norm / q.s * (1 + 1e-6)).all()  # one level at most, per coordinate (tolerance: fp32 rounding)
    big = torch.full((1, 512), 3e38)  # the norm exceeds fp32: sent as fp32's largest, levels saturate
    assert torch.isfinite(q.decompress(q.compress(big))).all()


def test_fp16_keeps_infinities_and_saturates_finite_values():
    c = HalfPrecision("fp16")
    v = torch.tensor([[float("inf"), -float("inf"), float("nan"), 1e6, -1e6, 1.5]])
    out = c.decompress(c.compress(v))[0]
    assert out[0] == math.inf and out[1] == -math.inf and math.isnan(out[2])
    assert out[3:5].tolist() == [65504.0, -65504.0] and out[5] == 1.5
    coll = SimulatedCollective(world_size=2, ledger=Ledger(preset("ethernet", 2)))
    mine, mean = c.reduce(torch.tensor([[float("inf"), 1.0], [1.0, 1.0]]), coll)  # through the all-reduce
    assert mean[0] == math.inf and mean[1] == 1.0


def test_majority_vote_is_nan_where_a_voter_diverged():
    m = MajorityVote()
    v = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    v[1, 5] = float("nan")
    packet = m.compress(v)
    assert packet.nbytes() == math.ceil(D / 8) + 1  # the signs and the finite flag
    decoded = m.decompress(packet)
    assert decoded[1].isnan().all() and torch.isfinite(decoded[[0, 2]]).all()
    vote = m.aggregate(decoded, torch.ones(3) / 3)
    assert vote.isnan().all()  # not ±1: the receivers see it
    assert torch.isfinite(m.aggregate(decoded, torch.tensor([1.0, 0.0, 1.0]))).all()  # voters chosen without it


def test_scaled_sign_scale_is_finite_for_values_near_the_fp32_limit():
    s = ScaledSign()
    v = torch.full((1, D), 3e38)
    out = s.decompress(s.compress(v))
    assert torch.isfinite(out).all() and out[0, 0] == pytest.approx(3e38, rel=1e-6)
