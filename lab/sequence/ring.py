"""Ring Attention: K/V blocks travel around a ring while each rank's queries stay put.

Paper: Liu, Zaharia, Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite Context",
arXiv 2310.01889; schedule and merge as in zhuzilin/ring-flash-attention (spec B2).

Forward, on the ring of an SP group of G ranks: at step s = 0..G−1 rank r holds the K/V of rank
(r − s) mod G, computes its queries' partial attention (out, lse) against that block and merges it with
the LSE rule; K and V (stacked into one message) move one hop per step, G − 1 hops in all. Causal
attention masks each block by absolute positions, so both layouts work: `contiguous` (ranks at the end
of the sequence do most of the work) and `zigzag` (every rank the same; `lab.sequence.layout`).

Backward: K/V go around the ring again (G − 1 hops) and the fp32 dK/dV accumulators travel with them
(G hops; the last one delivers them home). Each block's gradient uses the *global* out and lse saved by
the forward (`lab.sequence.kernels.block_grads`); dQ accumulates locally.

Bytes per rank per layer (b = bytes per element, h_kv = H_kv·Dh; spec B2):
forward (G−1)·2·(B·N/G·h_kv)·b; backward (G−1)·2·(B·N/G·h_kv)·b + G·2·(B·N/G·h_kv)·4. The contiguous
causal layout still sends every block although rank 0 uses none: zigzag balances compute, not bytes.

Exactness: E1 (fp32 association) against full attention.
"""
from __future__ import annotations

import torch

from lab.sequence.common import RingComm, delta, group_rings
from lab.sequence.kernels import block_attention, block_grads, empty_partial, merge


def ring_forward(plan, q, k, v, *, ring: RingComm, q_pos, kv_pos, tile: int = 0, tag: str = "ring"):
    """Partial-merging forward over `ring`; kv_pos(rank) -> (C,) positions of the K/V rank holds.
    Returns (out, lse) of the local queries against every K/V block of the ring."""
    out, lse = empty_partial(q)
    kv = torch.stack([k, v], dim=1)  # (n, 2, B, H, C, Dh): one message per hop
    for s in range(ring.size):
        k_pos = torch.stack([kv_pos(src) for src in ring.src(s)])
        mask = plan.mask(q_pos, k_pos)
        if mask is None or bool(mask.any()):
            out, lse = merge(out, lse, *block_attention(q, kv[:, 0], kv[:, 1], mask, tile=tile))
        if s < ring.size - 1:
            kv = ring.send(kv, tag=f"{plan.tag}.{tag}.fwd.kv")
    return out, lse


def ring_backward(plan, q, k, v, out, lse, d_out, *, ring: RingComm, q_pos, kv_pos, tile: int = 0,
                  tag: str = "ring"):
    """Backward with dK/dV travelling beside their K/V; returns (dq, dk, dv) of the local rows."""
    dlt = delta(d_out, out)
    dq = torch.zeros_like(q)
    kv = torch.stack([k, v], dim=1)
    dkv = torch.zeros(kv.shape, dtype=torch.float32)
    for s in range(ring.size):
        k_pos = torch.stack([kv_pos(src) for src in ring.src(s)])
        mask = plan.mask(q_pos, k_pos)
        if mask is None or bool(mask.any()):
            gq, gk, gv = block_grads(q, kv[:, 0], kv[:, 1], mask, d_out, lse, dlt, tile=tile)
            dq = dq + gq
            dkv = dkv + torch.stack([gk, gv], dim=1)
        if s < ring.size - 1:
            kv = ring.send(kv, tag=f"{plan.tag}.{tag}.bwd.kv")
        dkv = ring.send(dkv, tag=f"{plan.tag}.{tag}.bwd.dkv")  # the G-th hop brings them home
    return dq, dkv[:, 0].to(k.dtype), dkv[:, 1].to(v.dtype)


class RingAttention:
    name = "ring"
    label = "Ring Attention"

    @staticmethod
    def forward(plan, q, k, v):
        c = q.shape[-2]
        ring = group_rings(plan)
        out, lse = ring_forward(plan, q, k, v, ring=ring, q_pos=plan.local_pos(c),
                                kv_pos=lambda r: plan.pos_of(r, c), tile=plan.tile)
        return out, (q, k, v, out, lse)

    @staticmethod
    def backward(plan, saved, d_out):
        q, k, v, out, lse = saved
        c = q.shape[-2]
        return ring_backward(plan, q, k, v, out, lse, d_out, ring=group_rings(plan), q_pos=plan.local_pos(c),
                             kv_pos=lambda r: plan.pos_of(r, c), tile=plan.tile)
