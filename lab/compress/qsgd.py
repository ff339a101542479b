"""QSGD (Alistarh et al. 2017): unbiased stochastic quantization to s levels of |v_i| / ||v||₂, per bucket.

Spec Part B §B2. For each bucket of `bucket` coordinates (512 by default) with
L2 norm N: r = s|v_i|/N, l = ⌊r⌋, level ξ = l + 1 with probability r - l else
l; the receiver computes N · sign(v_i) · ξ / s. Unbiased with
E||Q(v) - v||² <= min(B/s², √B/s) ||v||² for bucket size B (that is ω).
Randomness is independent across workers (a generator per (seed, call, rank)).

What is sent: one fp32 norm per bucket + per coordinate a sign bit and the
level in ⌈log2(s+1)⌉ bits, packed as one b-bit code with b = 1 + ⌈log2(s+1)⌉
(≤ 8): ⌈d·b/8⌉ + 4⌈d/B⌉ bytes. The paper's Elias coding of the levels is not
used (the simple packing of the spec).

Overflow and divergence: the norm is computed in fp64 (an fp32 norm overflows
for values from about 1e19 and made them NaN); a bucket holding NaN or inf
sends a non-finite norm, so it decodes to NaN and receivers see the divergence.

Knob: ratio r -> b = ⌊32 (r - 1/B)⌋ clamped to 2..8 bits, s = 2^(b-1) - 1
(b = 2 is ternary, s = 1; b = 8 gives s = 127).

Scope: 'layer' (the spec's default) starts the buckets afresh at every
parameter tensor (segment), so no bucket mixes two tensors' scales; 'global'
buckets the whole vector.
"""
from __future__ import annotations

import math

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor
from lab.compress.packing import pack_uint, unpack_uint
from lab.compress.quantize import blocks_of


def levels_for_ratio(ratio: float, bucket: int) -> int:
    bits = max(2, min(8, math.floor(32 * (ratio - 1 / bucket))))
    return 2 ** (bits - 1) - 1


class QSGD(Compressor):
    name = "qsgd"
    unbiased = True
    knob = "levels s = 2^(b-1) - 1 with b = ⌊32 (ratio - 1/bucket)⌋ bits per value (2..8)"

    def __init__(self, *, levels: int | None = None, ratio: float | None = None, bucket: int = 512, seed: int = 0,
                 scope: str = "global"):
        if (levels is None) == (ratio is None):
            raise ValueError("QSGD needs exactly one of levels or ratio")
        if levels is None:
            levels = levels_for_ratio(ratio, bucket)
        if not 1 <= levels <= 127:
            raise ValueError(f"levels={levels!r} is invalid: expected 1..127 (codes of at most 8 bits)")
        self.s, self.bucket, self.seed, self.scope = levels, bucket, seed, scope
        self.bits = 1 + math.ceil(math.log2(levels + 1))

    def variance(self, d):
        b = min(self.bucket, d)
        return min(b / self.s ** 2, math.sqrt(b) / self.s)

    def describe(self, d):
        return f"s={self.s} ({self.bits} bits/value)"

    def compress(self, v, *, ranks=None):  # v: (n, d)
        n, d = v.shape
        segments = self.segment_lengths(d)
        b = torch.cat([blocks_of(p, self.bucket) for p in v.split(segments, dim=1)], dim=1)  # (n, nb, B)
        norms = bucket_norms(b)  # (n, nb) fp32, what is sent
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        r = b.abs() / safe.unsqueeze(2) * self.s  # in [0, s] (divided first: s·|v| could overflow)
        gens = self._generators(n, ranks)
        u = torch.stack([torch.rand(r.shape[1:], generator=g) for g in gens])  # (n, nb, B)
        level = torch.floor(r + u).clamp(max=self.s).nan_to_num(0.0)  # l + 1 with probability r - l
        # (a non-finite bucket sends a non-finite norm: its values decode to NaN, so divergence stays visible)
        sign = (b < 0).to(torch.uint8)
        code = (level.to(torch.uint8) << 1 | sign).reshape(n, -1)[:, _kept(segments, self.bucket)]  # (n, d)
        return Packet({"codes": pack_uint(code, self.bits), "norms": norms}, meta={"d": d, "segments": segments})

    def decompress(self, packet):
        d, segments = packet.meta["d"], packet.meta["segments"]
        code = unpack_uint(packet.tensors["codes"], self.bits, d)  # (n, d)
        level = (code >> 1).float()
        sign = 1.0 - 2.0 * (code & 1).float()
        norms = packet.tensors["norms"].repeat_interleave(self.bucket, dim=1)[:, _kept(segments, self.bucket)]
        return norms * (sign * level / self.s)  # level / s <= 1 first: norm · level could overflow


def bucket_norms(b: torch.Tensor) -> torch.Tensor:
    """(n, nb, B) -> (n, nb) L2 norms without overflow: computed in fp64 (fp32 squares overflow from about
    1.8e19), a finite norm beyond fp32's range sent as fp32's largest value (its levels then saturate at s),
    a non-finite one (NaN or inf in the bucket) sent as it is."""
    n64 = b.double().norm(dim=2)
    big = torch.finfo(torch.float32).max
    return torch.where(torch.isfinite(n64), n64.clamp(max=big), n64).float()


def _kept(segments, bucket: int) -> torch.Tensor:
    """Positions of the real coordinates among the zero-padded buckets of every segment, (d,)."""
    parts, at = [], 0
    for length in segments:
        parts.append(torch.arange(at, at + length))
        at += math.ceil(length / bucket) * bucket
    return torch.cat(parts)
