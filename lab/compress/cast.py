"""Half precision: send fp16 or bf16 instead of fp32 (ratio 1/2).

The cheapest compressor, and the one OpenDiLoCo uses for pseudo-gradients
(spec Part A §A3). Round-to-nearest, so biased, with a relative error per
coordinate of at most 2^-11 (fp16) or 2^-8 (bf16) inside the format's range;
fp16 overflows beyond ±65504 (finite values are clamped there; NaN and ±inf are
sent as they are, so a diverged sender stays visible) and loses values below
about 6e-8, bf16 keeps fp32's range.

What is sent: d half-precision values, 2d bytes. Half-precision payloads sum,
so across ranks this is an all-reduce of the half tensor (the ring carries 2
bytes per value; the simulated reduction accumulates in fp32 and rounds the
result back to the half format). The ratio knob does not apply: the measured
ratio is 0.5.
"""
from __future__ import annotations

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor

FORMATS = {"fp16": (torch.float16, 2.0 ** -11), "bf16": (torch.bfloat16, 2.0 ** -8)}


class HalfPrecision(Compressor):
    unbiased = False
    knob = "none: fixed at 2 bytes per value"

    def __init__(self, fmt: str = "fp16"):
        if fmt not in FORMATS:
            raise ValueError(f"fmt={fmt!r} is invalid: expected one of {list(FORMATS)}")
        self.name = fmt
        self.dtype, self.rel_error = FORMATS[fmt]
        # |C(v)_i - v_i| <= u |v_i| for unit roundoff u gives δ >= 1 - u² (within range)
        self.delta = 1.0 - self.rel_error ** 2

    def describe(self, d):
        return f"{self.name}: 16 bits/value"

    def compress(self, v, *, ranks=None):
        if self.dtype == torch.float16:
            v = torch.where(v.isinf(), v, v.clamp(-65504.0, 65504.0))  # saturate finite values only
        return Packet({"values": v.to(self.dtype)})

    def decompress(self, packet):
        return packet.tensors["values"].float()

    def reduce(self, v, collective, *, tag="", groups=None):
        packet = self.compress(v)
        self.last_nbytes = packet.nbytes()
        half = packet.tensors["values"]
        mean = collective.all_reduce(half, op="mean", tag=tag, groups=groups)  # (n, d): with groups, each its own
        mean = (mean if groups is not None else mean[0]).to(self.dtype).float()  # same rounding everywhere
        return half.float(), mean
