"""TokenRing: queries travel one way around the ring, partial results go straight back to their owner.

Paper: Wang, Liu, Li, Jiang, "TokenRing: An Efficient Parallelism Framework for Infinite-Context LLMs via
Bidirectional Communication", arXiv 2412.20501; code ACA-Lab-SJTU/token-ring (spec B3).

Forward: K/V stay resident. At step s = 1..G−1 each rank passes the Q it holds one hop on (so rank r holds
the Q of owner (r − s) mod G), computes that Q against its local K/V and sends the partial (out, lse) —
one message, `out` with `lse` appended — directly to the owner, s hops back; the owner merges it with the
LSE rule. On a full mesh (NVSwitch) the Q stream and the out stream use different links at once, so a
step costs max(|Q|, |out| + |lse|) instead of |K| + |V| on one link. Causal attention masks every block
by absolute positions (contiguous or zigzag layout); masked-out partials are still sent (the zigzag
half-Q saving of the reference code is not modelled).

Backward [RECON — the reference repository ships no backward (spec B3)]: the mirror image of the
forward. K/V and dK/dV stay resident; (Q, dO, lse, D = rowsum(dO ∘ out)) travel one hop per step, and
each step's partial dQ (fp32) goes straight back to the query's owner.

Bytes per rank per layer (non-causal and causal alike; b = bytes per element):
forward (G−1)·(B·N/G·h)·b for Q + (G−1)·B·N/G·(h·b + H·4) for out and lse;
backward (G−1)·B·N/G·(2h·b + 2H·4) + (G−1)·(B·N/G·h)·4.
Against Ring Attention's 2(G−1)·(B·N/G·h_kv)·b forward: about equal for multi-head attention but split
over two links, and more for grouped-query attention (h_kv < h).

Exactness: E1 against full attention.
"""
from __future__ import annotations

import torch

from lab.sequence.common import delta, group_rings
from lab.sequence.kernels import block_attention, block_grads, merge


class TokenRing:
    name = "token_ring"
    label = "TokenRing"

    @staticmethod
    def forward(plan, q, k, v):
        c = q.shape[-2]
        ring = group_rings(plan)
        k_pos = plan.local_pos(c)
        out, lse = block_attention(q, k, v, plan.mask(k_pos, k_pos))  # step 0: own queries, own keys
        cur = q
        for s in range(1, ring.size):
            cur = ring.send(cur, tag=f"{plan.tag}.token_ring.fwd.q")
            q_pos = torch.stack([plan.pos_of(o, c) for o in ring.src(s)])
            b_out, b_lse = block_attention(cur, k, v, plan.mask(q_pos, k_pos))
            back = ring.send(torch.cat([b_out, b_lse.unsqueeze(-1)], dim=-1), offset=-s,
                             tag=f"{plan.tag}.token_ring.fwd.out")
            out, lse = merge(out, lse, back[..., :-1], back[..., -1])
        return out, (q, k, v, out, lse)

    @staticmethod
    def backward(plan, saved, d_out):
        q, k, v, out, lse = saved
        c, d = q.shape[-2], q.shape[-1]
        ring = group_rings(plan)
        k_pos = plan.local_pos(c)
        dlt = delta(d_out, out)
        dq, dk, dv = block_grads(q, k, v, plan.mask(k_pos, k_pos), d_out, lse, dlt)
        bundle = torch.cat([q, d_out, lse.unsqueeze(-1), dlt.unsqueeze(-1)], dim=-1)  # (n, B, H, C, 2Dh + 2)
        for s in range(1, ring.size):
            bundle = ring.send(bundle, tag=f"{plan.tag}.token_ring.bwd.q")
            q_pos = torch.stack([plan.pos_of(o, c) for o in ring.src(s)])
            gq, gk, gv = block_grads(bundle[..., :d], k, v, plan.mask(q_pos, k_pos), bundle[..., d:2 * d],
                                     bundle[..., 2 * d], bundle[..., 2 * d + 1])
            dk, dv = dk + gk, dv + gv
            dq = dq + ring.send(gq.float(), offset=-s, tag=f"{plan.tag}.token_ring.bwd.dq")
        return dq.to(q.dtype), dk, dv
