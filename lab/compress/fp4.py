"""4-bit float E3M0: a sign bit and a 3-bit exponent, no mantissa, with one fp32 scale per block.

The format Streaming DiLoCo sends its outer gradients in (Douillard et al.
2025, "Streaming DiLoCo with overlapping communication"; spec
shared/techniques/sync_and_compression.md §A4). With no mantissa every nonzero
magnitude is a power of two; the 3-bit exponent field e gives zero (e = 0, the
format's subnormal) and seven magnitudes s·2^(e−7), e = 1..7, i.e. s/64, s/32,
..., s/2, s, where s is the block's largest |v| (so the largest value is exact).

Coding: coordinate v of a block with scale s gets the representable magnitude
nearest to |v| (ties to the smaller; |v| < s/128 becomes 0) and its sign; the
4-bit code is sign·8 + e, packed two to a byte. The receiver computes
±s·2^(e−7) (0 for e = 0). Round to nearest is biased: the relative error of a
coordinate is at most 1/3 above s/64, and up to 1 below it (small values are
flushed to zero); the block's largest coordinate is exact, so
E||C(v) − v||² <= (1 − 1/block)||v||², δ = 1/block.

[RECON] the paper's exact scaling is not specified in what the spec could
read: the spec suggests one scale per tensor and rounding log2|v| to nearest;
here the scale is per block of `block` values (as the int4 block format beside
it, `lab.compress.quantize`) and rounding is to the nearest value, as an IEEE
format rounds.

What is sent: ⌈d/2⌉ bytes of codes + 4 bytes per block — the same size as
int4. The ratio knob does not apply (the size is fixed); the measured ratio is
shown.
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor
from lab.compress.packing import pack_uint, unpack_uint
from lab.compress.quantize import blocks_of

EXP_BITS = 3
TOP = 2 ** EXP_BITS - 1  # 7: the exponent field of the largest magnitude, s
#: the magnitudes of exponent fields 0..7 relative to the scale: 0, 2^-6, ..., 2^-1, 1
MAGNITUDES = torch.cat([torch.zeros(1), 2.0 ** torch.arange(-(TOP - 1), 1, dtype=torch.float32)])
_MIDPOINTS = (MAGNITUDES[:-1] + MAGNITUDES[1:]) / 2  # (7,) rounding thresholds between neighbours


class FP4E3M0(Compressor):
    name = "fp4"
    knob = "none: 4 bits (sign + 3-bit exponent) + an fp32 scale per block"

    def __init__(self, *, block: int = 256):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block={block!r} is invalid: expected an integer >= 1")
        self.block = block
        self.delta = 1.0 / block

    def describe(self, d):
        return f"E3M0: 4 bits + fp32 scale per {self.block}"

    def compress(self, v, *, ranks=None):  # v: (n, d)
        n, d = v.shape
        b = blocks_of(v, self.block)  # (n, nb, B)
        scale = b.abs().amax(dim=2)  # (n, nb) the largest magnitude of each block
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        x = (b.abs() / safe.unsqueeze(2)).reshape(n, -1)[:, :d].contiguous()  # (n, d) in [0, 1]
        exp = torch.bucketize(x, _MIDPOINTS)  # (n, d) in 0..7, nearest magnitude (ties to the smaller)
        sign = (v < 0) & (exp > 0)
        codes = pack_uint((sign.to(torch.uint8) << EXP_BITS) | exp.to(torch.uint8), EXP_BITS + 1)
        return Packet({"codes": codes, "scales": scale}, meta={"d": d})

    def decompress(self, packet):
        d = packet.meta["d"]
        code = unpack_uint(packet.tensors["codes"], EXP_BITS + 1, d)  # (n, d) uint8
        mag = MAGNITUDES[(code & TOP).long()]  # (n, d)
        sign = 1.0 - 2.0 * (code >> EXP_BITS).float()
        s = packet.tensors["scales"].repeat_interleave(self.block, dim=1)[:, :d]  # (n, d)
        return sign * mag * s
