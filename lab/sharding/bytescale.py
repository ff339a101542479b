"""ByteScale's hybrid data parallelism (HDP) as a what-if for batches of mixed sequence lengths.

Paper: Ge et al., "ByteScale: Efficient Scaling of LLM Training with a 2048K
Context Length on More Than 12,000 GPUs" (arXiv 2502.21231; abstract level,
spec §A8). A static mesh gives every sequence the same context-parallel (CP)
degree c, so a batch with one long sequence pays ring-attention traffic for
all the short ones too. HDP makes all P ranks one group: sequence s of length
ℓ_s gets the fewest ranks that hold it, c_s = ⌈ℓ_s / C⌉ for a per-rank token
capacity C; short sequences are packed onto single ranks with no CP
communication, long ones get a dynamic CP group and run ring attention (B2).

`hdp_assign` places one micro-batch step: long sequences first on consecutive
free ranks, then the short ones longest first, each on the rank with the least
attention work (Σ ℓ², causal) among those with room — a greedy stand-in for the
paper's balance scheduler [RECON]. `hdp_whatif` compares it with static CP of
degree c (sequences spread over the P/c CP groups the same way): per layer, the
ring's bytes Σ_s c_s·2(c_s − 1)·(ℓ_s / c_s)·h_kv·b (K and V passed c_s − 1
times by each of the c_s ranks), tokens per rank and the attention-work
imbalance (max / mean). Gradient synchronization is the same under both (all
P ranks, ZeRO-style); the loss must be the token mean over the global batch,
or packing changes the gradient (the spec's classic bug; not modelled here).
"""
from __future__ import annotations

import math

import numpy as np


def _check(seq_lengths, num_ranks, capacity):
    lengths = [int(x) for x in seq_lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"seq_lengths={list(seq_lengths)!r} is invalid: expected positive token counts")
    for name, v in (("num_ranks", num_ranks), ("capacity", capacity)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is invalid: expected an integer >= 1")
    if sum(lengths) > num_ranks * capacity:
        raise ValueError(f"capacity={capacity!r} is too small: {sum(lengths)} tokens do not fit on {num_ranks} "
                         f"ranks of {capacity} tokens")
    return lengths


def hdp_assign(seq_lengths, *, num_ranks: int, capacity: int) -> list[list[int]]:
    """For every sequence, the ranks that hold it (c_s = ⌈ℓ_s / capacity⌉ of them)."""
    lengths = _check(seq_lengths, num_ranks, capacity)
    tokens, work = np.zeros(num_ranks), np.zeros(num_ranks)
    out: list[list[int]] = [[] for _ in lengths]
    nxt = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        c = math.ceil(lengths[i] / capacity)
        if c > 1:  # a dynamic CP group of whole, consecutive ranks
            if nxt + c > num_ranks:
                raise ValueError(f"capacity={capacity!r} is too small: the long sequences need more than "
                                 f"{num_ranks} ranks")
            out[i] = list(range(nxt, nxt + c))
            tokens[nxt:nxt + c] = capacity
            work[nxt:nxt + c] += lengths[i] ** 2 / 2 / c
            nxt += c
            continue
        room = [r for r in range(nxt, num_ranks) if tokens[r] + lengths[i] <= capacity]
        if not room:
            raise ValueError(f"capacity={capacity!r} is too small to pack the short sequences")
        r = min(room, key=lambda r: (work[r], r))
        out[i] = [r]
        tokens[r] += lengths[i]
        work[r] += lengths[i] ** 2 / 2
    return out


def static_assign(seq_lengths, *, num_ranks: int, cp_degree: int) -> list[list[int]]:
    """Static CP: every sequence over one of the P/c CP groups (the group with the least work so far)."""
    lengths = [int(x) for x in seq_lengths]
    if cp_degree < 1 or num_ranks % cp_degree:
        raise ValueError(f"cp_degree={cp_degree!r} is invalid: expected a divisor of num_ranks={num_ranks}")
    groups = num_ranks // cp_degree
    work = np.zeros(groups)
    out = [[] for _ in lengths]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        g = int(work.argmin())
        out[i] = list(range(g * cp_degree, (g + 1) * cp_degree))
        work[g] += lengths[i] ** 2
    return out


def _summary(lengths, assignment, num_ranks, kv_dim, bytes_per_element):
    tokens, work = np.zeros(num_ranks), np.zeros(num_ranks)
    cp_bytes = 0.0
    for n, ranks in zip(lengths, assignment):
        c = len(ranks)
        tokens[ranks] += n / c
        work[ranks] += n * n / 2 / c
        if c > 1:
            cp_bytes += c * 2 * (c - 1) * (n / c) * kv_dim * bytes_per_element
    return {"cp_bytes_per_layer": cp_bytes, "max_tokens_per_rank": float(tokens.max()),
            "work_imbalance": float(work.max() / work.mean()), "cp_sequences": sum(len(r) > 1 for r in assignment)}


def hdp_whatif(seq_lengths, *, num_ranks: int, capacity: int, kv_dim: int, cp_degree: int | None = None,
               bytes_per_element: int = 2) -> dict:
    """HDP against static CP of degree `cp_degree` (default: the smallest divisor of the ranks that fits the
    longest sequence): {'hdp': {...}, 'static': {...}, 'bytes_ratio': static / HDP}."""
    lengths = _check(seq_lengths, num_ranks, capacity)
    if cp_degree is None:
        need = math.ceil(max(lengths) / capacity)
        cp_degree = next(d for d in range(need, num_ranks + 1) if num_ranks % d == 0)
    hdp = _summary(lengths, hdp_assign(lengths, num_ranks=num_ranks, capacity=capacity), num_ranks, kv_dim,
                   bytes_per_element)
    static = _summary(lengths, static_assign(lengths, num_ranks=num_ranks, cp_degree=cp_degree), num_ranks, kv_dim,
                      bytes_per_element)
    return {"hdp": hdp, "static": {**static, "cp_degree": cp_degree},
            "bytes_ratio": static["cp_bytes_per_layer"] / max(hdp["cp_bytes_per_layer"], 1.0)}
