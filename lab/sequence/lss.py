"""LSS Transformer: segment-parallel attention with a fused K/V gather and double gradient averaging.

Paper: Wang et al., "Ultra-Long Sequence Distributed Transformer", arXiv 2311.02382 (spec B8; the
paper's exact steps are [UNVERIFIED]: this follows the spec's reconstruction).

Each rank owns a segment of the sequence and computes "partial self-attention" for its own queries
against every key: one fused all-gather of [K; V] over the SP group (instead of exchanging partial
attention results), then local attention with a causal mask by absolute position. Backward: dQ is local;
the gathered dK/dV are summed back to their owners by a reduce-scatter (the all-gather's adjoint).

Double gradient averaging (at training time, `lab.sequence.technique`): every rank's weight gradients
cover only its segment's terms of the loss, so they are (1) summed over the SP group, then (2) averaged
over the data-parallel groups — two all-reduces, where the other methods fuse both into one over every
rank (numerically the same sum).

Bytes per rank per layer: forward (G−1)/G·2·B·N·h_kv·b (ring all-gather); backward the same in fp32
(ring reduce-scatter). Memory: the whole sequence's K/V on every rank, 2·B·N·h_kv·b per layer.

Exactness: E1 against full attention.
"""
from __future__ import annotations

import torch

from lab.sequence.common import delta
from lab.sequence.kernels import block_attention, block_grads


def _gathered_pos(plan, c):
    return torch.stack([torch.cat([plan.pos_of(m, c) for m in plan.group_of(r)]) for r in plan.collective.ranks])


class LSS:
    name = "lss"
    label = "LSS Transformer"

    @staticmethod
    def forward(plan, q, k, v):
        n, b, h, c, d = q.shape
        g = plan.group_size
        kv = plan.collective.all_gather(torch.stack([k, v], dim=1), groups=plan.coll_groups,
                                        tag=f"{plan.tag}.lss.fwd.kv")  # (n, G, 2, B, H, C, Dh)
        kv = kv.permute(0, 2, 3, 4, 1, 5, 6).reshape(n, 2, b, h, g * c, d)  # keys in group order
        mask = plan.mask(plan.local_pos(c), _gathered_pos(plan, c))
        out, lse = block_attention(q, kv[:, 0], kv[:, 1], mask)
        return out, (q, kv, out, lse)

    @staticmethod
    def backward(plan, saved, d_out):
        q, kv, out, lse = saved
        n, b, h, c, d = q.shape
        g = plan.group_size
        mask = plan.mask(plan.local_pos(c), _gathered_pos(plan, c))
        dq, dk, dv = block_grads(q, kv[:, 0], kv[:, 1], mask, d_out, lse, delta(d_out, out))
        dkv = torch.stack([dk, dv], dim=1).reshape(n, 2, b, h, g, c, d).permute(0, 4, 1, 2, 3, 5, 6)  # (n, G, 2, ...)
        mine = plan.collective.reduce_scatter(dkv.contiguous(), op="sum", groups=plan.coll_groups,
                                              tag=f"{plan.tag}.lss.bwd.dkv")  # (n, 1, 2, B, H, C, Dh)
        return dq, mine[:, 0, 0].to(q.dtype), mine[:, 0, 1].to(q.dtype)
