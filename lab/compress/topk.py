"""Top-k sparsification: send the k largest-magnitude coordinates.

Biased and contractive with δ = k/d (Stich et al. 2018; spec Part B §B1). Use it
with error feedback (`lab.compress.error_feedback`), or it can stall or diverge
across heterogeneous workers.

What is sent per message: the k fp32 values and where they are — either k int32
indices (8k bytes in all) or a packed bitmap of d bits (4k + ⌈d/8⌉ bytes),
whichever is smaller, as the spec prescribes.

Knob: `ratio` r, the target encoded/dense bytes; k is the largest count whose
encoding fits in r · 4d bytes (at least 1). The measured ratio comes from the packet.

Scope: 'layer' (the spec's default, Part B: top-k per parameter tensor) splits
the same k over the vector's `segments` in proportion to their lengths (largest
remainders; a segment gets at most its length) and takes the top k_l of each;
'global' takes the top k of the whole vector (a different method). The packet
is the same either way: k values and their positions in the whole vector.
"""
from __future__ import annotations

import math

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor
from lab.compress.packing import pack_bits, unpack_bits


def k_for_ratio(ratio: float, d: int) -> int:
    budget = ratio * 4 * d
    k_index = math.floor(budget / 8)
    k_bitmap = math.floor((budget - math.ceil(d / 8)) / 4)
    return max(1, min(d, max(k_index, k_bitmap)))


def split_count(k: int, lengths) -> list[int]:
    """k split over segments in proportion to their lengths (largest remainders first; at most each length)."""
    total = sum(lengths)
    exact = [k * n / total for n in lengths]
    out = [min(n, math.floor(e)) for n, e in zip(lengths, exact)]
    order = sorted(range(len(lengths)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    left = k - sum(out)
    while left > 0:
        for i in order:
            if left and out[i] < lengths[i]:
                out[i] += 1
                left -= 1
    return out


class TopK(Compressor):
    name = "topk"
    unbiased = False
    knob = "k: the most coordinates whose values + indices (or bitmap) fit in ratio · 4d bytes"

    def __init__(self, *, ratio: float | None = None, k: int | None = None, scope: str = "global"):
        if (ratio is None) == (k is None):
            raise ValueError("TopK needs exactly one of ratio or k")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"compression_ratio={ratio!r} is invalid: it must be in (0, 1]")
        self.ratio, self.k, self.scope = ratio, k, scope

    def piece(self, segments, share=1.0):
        c = super().piece(segments, share)
        if c.k is not None:
            c.k = max(1, math.ceil(c.k * share))
        return c

    def k_for(self, d: int) -> int:
        return min(d, self.k) if self.k is not None else k_for_ratio(self.ratio, d)

    def contraction(self, d: int) -> float:
        return self.k_for(d) / d

    def describe(self, d: int) -> str:
        return f"k={self.k_for(d)}"

    def compress(self, v, *, ranks=None):  # v: (n, d)
        n, d = v.shape
        k = self.k_for(d)
        idx = self._select(v, k)  # (n, k) ascending
        vals = v.gather(1, idx)  # (n, k) in v's dtype (fp32 in the lab: 4 bytes each)
        meta = {"d": d, "k": k}
        if 4 * k + math.ceil(d / 8) < 8 * k:
            mask = torch.zeros(n, d, dtype=torch.bool, device=v.device)
            mask.scatter_(1, idx, True)
            return Packet({"values": vals, "bitmap": pack_bits(mask)}, meta=meta)
        return Packet({"values": vals, "indices": idx.to(torch.int32)}, meta=meta)

    def _select(self, v: torch.Tensor, k: int) -> torch.Tensor:
        """Positions of the kept coordinates (n, k), ascending: the top k, or the top k_l of each segment."""
        segments = self.segment_lengths(v.shape[1])
        if len(segments) == 1:
            return v.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values
        parts, at = [], 0
        for length, k_l in zip(segments, split_count(k, segments)):
            if k_l:
                parts.append(v[:, at:at + length].abs().topk(k_l, dim=1, sorted=False).indices.sort(dim=1).values + at)
            at += length
        return torch.cat(parts, dim=1)

    def decompress(self, packet):
        vals = packet.tensors["values"]
        lead = vals.shape[:-1]
        vals = vals.reshape(-1, vals.shape[-1])
        d = packet.meta["d"]
        out = torch.zeros(vals.shape[0], d, dtype=vals.dtype, device=vals.device)
        if "bitmap" in packet.tensors:
            mask = unpack_bits(packet.tensors["bitmap"].reshape(vals.shape[0], -1), d)
            out[mask] = vals.reshape(-1)  # row-major order matches the sorted indices
        else:
            out.scatter_(1, packet.tensors["indices"].reshape(vals.shape[0], -1).long(), vals)
        return out.reshape(*lead, d)
