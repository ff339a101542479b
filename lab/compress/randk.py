"""Random-k sparsification with a shared seed: k uniformly random coordinates; the indices are not sent.

Spec Part B §B1. The sender draws a fresh 63-bit seed per message (from the
compressor seed, the call count and its rank), picks k of d coordinates with a
`torch.Generator` seeded by it, and sends the k values and the seed; the
receiver regenerates the same k indices from the seed. Unbiased when scaled
by d/k (the default; ω = d/k - 1), or unscaled (`scaled=False`; biased with
E||C(v) - v||² = (1 - k/d)||v||², so δ = k/d, for use with error feedback).

What is sent: k fp32 values + the 8-byte seed (an int64 tensor in the packet):
4k + 8 bytes. Knob: ratio r -> k = ⌊(r · 4d - 8) / 4⌋ (at least 1).
"""
from __future__ import annotations

import math

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor, row_seed


def indices_from_seed(seed: int, d: int, k: int) -> torch.Tensor:
    """The k sorted coordinates a seed selects, (k,) int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(d, generator=g)[:k].sort().values


class RandK(Compressor):
    name = "randk"
    knob = "k = ⌊(ratio · 4d - 8) / 4⌋ values; the indices come from an 8-byte seed"

    def __init__(self, *, ratio: float | None = None, k: int | None = None, scaled: bool = True, seed: int = 0):
        if (ratio is None) == (k is None):
            raise ValueError("RandK needs exactly one of ratio or k")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"compression_ratio={ratio!r} is invalid: it must be in (0, 1]")
        self.ratio, self.k, self.scaled, self.seed = ratio, k, scaled, seed
        self.unbiased = scaled

    def piece(self, segments, share=1.0):
        c = super().piece(segments, share)
        if c.k is not None:
            c.k = max(1, math.ceil(c.k * share))
        return c

    def k_for(self, d: int) -> int:
        if self.k is not None:
            return min(d, self.k)
        return max(1, min(d, math.floor((self.ratio * 4 * d - 8) / 4)))

    def variance(self, d):
        return d / self.k_for(d) - 1 if self.scaled else None

    def contraction(self, d):
        return None if self.scaled else self.k_for(d) / d

    def describe(self, d):
        return f"k={self.k_for(d)}"

    def compress(self, v, *, ranks=None):  # v: (n, d)
        n, d = v.shape
        k = self.k_for(d)
        ranks = list(range(n)) if ranks is None else list(ranks)
        seeds = torch.tensor([[row_seed(self.seed, self.calls, r)] for r in ranks], dtype=torch.int64)  # (n, 1)
        self.calls += 1
        idx = torch.stack([indices_from_seed(int(s), d, k) for s in seeds[:, 0]]).to(v.device)  # (n, k)
        vals = v.gather(1, idx).float() * (d / k if self.scaled else 1.0)
        return Packet({"values": vals, "seed": seeds}, meta={"d": d, "k": k})

    def decompress(self, packet):
        d, k = packet.meta["d"], packet.meta["k"]
        vals, seeds = packet.tensors["values"], packet.tensors["seed"]
        idx = torch.stack([indices_from_seed(int(s), d, k) for s in seeds[:, 0]]).to(vals.device)  # (n, k)
        return torch.zeros(vals.shape[0], d, device=vals.device).scatter_(1, idx, vals)
