"""Sign compressors: 1 bit per coordinate (spec Part B §B3).

`ScaledSign` (EF-signSGD, Karimireddy et al. 2019): C(v) = (||v||₁ / d) · sign(v),
sent as d packed sign bits + one fp32 scale, ⌈d/8⌉ + 4 bytes. Biased; its
contraction ||v||₁² / (d ||v||²) depends on v and is at least 1/d (reported as
δ = 1/d). Use it inside error feedback. Zeros are sent as +. With scope='layer'
(the spec's default) each parameter tensor (segment) gets its own scale
||v_l||₁ / d_l: ⌈d/8⌉ + 4 · (number of tensors) bytes.

`MajorityVote` (signSGD with majority vote, Bernstein et al. 2018): each worker
sends sign(v) (⌈d/8⌉ bytes, no scale) and one byte saying whether v was finite
(a sign bit cannot carry NaN: a worker whose v holds NaN or inf decodes to NaN,
so the vote is NaN and receivers see the divergence instead of ±1); the
aggregate is the elementwise majority sign(Σ_i sign(v_i)) (0 on a tie); the
optimizer steps along the vote,
so the learning rate sets the step per coordinate. Here every rank gathers the
signs and computes the vote itself (no server downlink). Biased towards the
median worker under heterogeneity; it takes no error feedback.
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor
from lab.compress.packing import pack_bits, unpack_bits


class ScaledSign(Compressor):
    name = "sign"
    unbiased = False
    knob = "none: 1 bit per value + one fp32 scale"

    def __init__(self, *, scope: str = "global"):
        self.scope = scope

    def contraction(self, d):
        return 1.0 / d

    def describe(self, d):
        n = len(self.segment_lengths(d))
        return "1 bit/value + scale" if n == 1 else f"1 bit/value + {n} scales"

    def compress(self, v, *, ranks=None):  # v: (n, d)
        segments = self.segment_lengths(v.shape[1])
        # (n, S) the mean |v| per segment, summed in fp64 (an fp32 sum of values near 3e38 overflows); NaN or inf
        # in a segment make its scale non-finite, so the decoded vector is too
        scale = torch.stack([p.abs().mean(dim=1) for p in v.double().split(segments, dim=1)], dim=1).float()
        return Packet({"signs": pack_bits(v < 0), "scale": scale}, meta={"d": v.shape[1], "segments": segments})

    def decompress(self, packet):
        neg = unpack_bits(packet.tensors["signs"], packet.meta["d"])  # (n, d)
        counts = torch.tensor(packet.meta["segments"], device=neg.device)
        return packet.tensors["scale"].repeat_interleave(counts, dim=1) * (1.0 - 2.0 * neg.float())


class MajorityVote(Compressor):
    name = "majority_vote"
    unbiased = False
    knob = "none: 1 bit per value (+ 1 byte: finite or not)"

    def contraction(self, d):
        return None  # ±1 entries do not shrink towards v

    def describe(self, d):
        return "1 bit/value, majority vote"

    def compress(self, v, *, ranks=None):
        finite = torch.isfinite(v).all(dim=1, keepdim=True).to(torch.uint8)  # (n, 1)
        return Packet({"signs": pack_bits(v < 0), "finite": finite}, meta={"d": v.shape[1]})

    def decompress(self, packet):
        neg = unpack_bits(packet.tensors["signs"], packet.meta["d"])
        out = 1.0 - 2.0 * neg.float()
        return torch.where(packet.tensors["finite"].bool(), out, torch.full_like(out, float("nan")))

    def aggregate(self, decoded, weights):
        """sign(Σ_i sign_i) over the ranks with non-zero weight; the weights only select voters."""
        votes = decoded[weights > 0].sum(dim=0)
        return torch.where(votes.isnan(), votes, torch.sign(votes))  # torch.sign(NaN) is 0: keep the NaN
