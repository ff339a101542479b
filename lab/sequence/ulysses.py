"""DeepSpeed-Ulysses (all-to-all between sequence-sharded and head-sharded layouts) and the USP-style
hybrid (Ulysses inside a node, Ring Attention across nodes).

Ulysses — Jacobs et al., "DeepSpeed Ulysses: System Optimizations for Enabling Training of Extreme Long
Sequence Transformer Models", arXiv 2309.14509; index mapping as `deepspeed/sequence/layer.py` (spec B4).
An all-to-all inside the SP group of G ranks turns Q, K, V from [N/G tokens, H heads] into [N tokens,
H/G heads] (rank j gets head group j; the sequence chunks are concatenated in source-rank order); every
rank then runs ordinary attention over the whole sequence for its heads (causal by absolute positions),
and an all-to-all on the output switches back. Q, K and V travel in one all-to-all here (the same bytes
as DeepSpeed's three, fewer messages). Backward: the adjoint all-to-alls — dO to head-sharded, local
attention backward (the head-sharded Q, K, V, out and lse are kept from the forward), dQ, dK, dV back.
Bytes per rank per layer: (G−1)/G·(B·N/G)·(h + 2h_kv + h)·b forward and the same backward; constant
when N and G grow together. Needs H divisible by G.

USP hybrid — Fang, Zhao, "USP: A Unified Sequence Parallelism Approach for Long Context Generative AI",
arXiv 2405.07719 [RECON from the abstract: the 2-D arrangement, not its code]. The SP group is U × R:
Ulysses all-to-alls inside groups of U consecutive ranks (a node: `ulysses_degree`, default the
topology's ranks per node), then Ring Attention over the R ranks that hold the same head group in
different nodes (`lab.sequence.ring`), then the all-to-all back. The all-to-alls stay on intra-node
links; only the ring's hops cross nodes. After the all-to-all a rank holds H/U heads of N/R tokens, so
bytes per rank per layer are Ulysses' over U plus, forward, (R−1)·2·(B·N/R·h_kv/U)·b, and backward the
same K/V hops plus R·2·(B·N/R·h_kv/U)·4 for dK/dV (Ring Attention's backward on R ranks).

Exactness: E0/E1 (all-to-all is data movement).
"""
from __future__ import annotations

import torch

from lab.sequence.common import RingComm, delta
from lab.sequence.kernels import block_attention, block_grads
from lab.sequence.ring import ring_backward, ring_forward


def to_heads(collective, x, groups, *, tag: str):
    """(n, S, B, H, C, Dh) sequence-sharded -> (n, S, B, H/G, G·C, Dh) head-sharded (one all-to-all)."""
    n, s, b, h, c, d = x.shape
    g = len(groups[0]) if groups else collective.world_size
    send = x.reshape(n, s, b, g, h // g, c, d).permute(0, 3, 1, 2, 4, 5, 6).contiguous()  # (n, G, S, B, H/G, C, Dh)
    recv = collective.all_to_all(send, groups=groups, tag=tag)  # (n, G: source rank, S, B, H/G, C, Dh)
    return recv.permute(0, 2, 3, 4, 1, 5, 6).reshape(n, s, b, h // g, g * c, d)


def to_sequence(collective, y, groups, *, tag: str):
    """(n, S, B, H/G, G·C, Dh) head-sharded -> (n, S, B, H, C, Dh) sequence-sharded (the inverse)."""
    n, s, b, hg, gc, d = y.shape
    g = len(groups[0]) if groups else collective.world_size
    send = y.reshape(n, s, b, hg, g, gc // g, d).permute(0, 4, 1, 2, 3, 5, 6).contiguous()  # (n, G, S, B, H/G, C, Dh)
    recv = collective.all_to_all(send, groups=groups, tag=tag)  # (n, G: source head group, S, B, H/G, C, Dh)
    return recv.permute(0, 2, 3, 1, 4, 5, 6).reshape(n, s, b, g * hg, gc // g, d)


def _check_heads(h: int, g: int, what: str):
    if h % g:
        raise ValueError(f"{what}: {h} heads are not divisible by the {g} ranks of an all-to-all group; "
                         f"expected a head count that is a multiple of {g}")


def _segment_pos(plan, members, chunk):
    return torch.cat([plan.pos_of(r, chunk) for r in members])


class Ulysses:
    name = "ulysses"
    label = "DeepSpeed-Ulysses"

    @staticmethod
    def forward(plan, q, k, v):
        c, g = q.shape[-2], plan.group_size
        _check_heads(q.shape[2], g, "ulysses")
        tag = f"{plan.tag}.ulysses"
        qkv = to_heads(plan.collective, torch.stack([q, k, v], dim=1), plan.coll_groups, tag=f"{tag}.fwd.qkv")
        pos = torch.stack([_segment_pos(plan, plan.group_of(r), c) for r in plan.collective.ranks])
        out_h, lse_h = block_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], plan.mask(pos, pos))
        out = to_sequence(plan.collective, out_h.unsqueeze(1), plan.coll_groups, tag=f"{tag}.fwd.out")[:, 0]
        return out, (qkv, out_h, lse_h)

    @staticmethod
    def backward(plan, saved, d_out):
        qkv, out_h, lse_h = saved
        c = d_out.shape[-2]
        tag = f"{plan.tag}.ulysses"
        d_h = to_heads(plan.collective, d_out.unsqueeze(1), plan.coll_groups, tag=f"{tag}.bwd.dout")[:, 0]
        pos = torch.stack([_segment_pos(plan, plan.group_of(r), c) for r in plan.collective.ranks])
        grads = block_grads(qkv[:, 0], qkv[:, 1], qkv[:, 2], plan.mask(pos, pos), d_h, lse_h, delta(d_h, out_h))
        back = to_sequence(plan.collective, torch.stack(grads, dim=1), plan.coll_groups, tag=f"{tag}.bwd.dqkv")
        return back[:, 0], back[:, 1], back[:, 2]


def usp_shape(plan) -> tuple[int, int]:
    """(U, R): Ulysses degree inside a node and ring degree across nodes for this plan's SP groups."""
    g = plan.group_size
    u = plan.ulysses_degree or min(plan.collective.ledger.topology.ranks_per_node, g)
    if u < 1 or g % u:
        raise ValueError(f"ulysses_degree={plan.ulysses_degree!r} is invalid: expected a divisor of the SP group "
                         f"size {g}")
    return u, g // u


def usp_layout(plan):
    """(all-to-all groups of U consecutive ranks, RingComm over the ranks with the same head group)."""
    u, r = usp_shape(plan)
    a2a = [grp[i:i + u] for grp in plan.groups for i in range(0, len(grp), u)]
    rings = [[grp[j * u + i] for j in range(r)] for grp in plan.groups for i in range(u)]
    return (a2a if len(a2a) > 1 else None), RingComm(plan.collective, rings), a2a


class USP:
    name = "usp"
    label = "USP (Ulysses × Ring)"

    @staticmethod
    def forward(plan, q, k, v):
        c = q.shape[-2]
        groups, ring, a2a = usp_layout(plan)
        _check_heads(q.shape[2], len(a2a[0]), "usp")
        tag = f"{plan.tag}.usp"
        qkv = to_heads(plan.collective, torch.stack([q, k, v], dim=1), groups, tag=f"{tag}.fwd.qkv")
        seg = {r: _segment_pos(plan, grp, c) for grp in a2a for r in grp}
        q_pos = torch.stack([seg[r] for r in plan.collective.ranks])
        out_h, lse_h = ring_forward(plan, qkv[:, 0], qkv[:, 1], qkv[:, 2], ring=ring, q_pos=q_pos,
                                    kv_pos=seg.__getitem__, tag="usp.ring")
        out = to_sequence(plan.collective, out_h.unsqueeze(1), groups, tag=f"{tag}.fwd.out")[:, 0]
        return out, (qkv, out_h, lse_h)

    @staticmethod
    def backward(plan, saved, d_out):
        qkv, out_h, lse_h = saved
        c = d_out.shape[-2]
        groups, ring, a2a = usp_layout(plan)
        tag = f"{plan.tag}.usp"
        d_h = to_heads(plan.collective, d_out.unsqueeze(1), groups, tag=f"{tag}.bwd.dout")[:, 0]
        seg = {r: _segment_pos(plan, grp, c) for grp in a2a for r in grp}
        q_pos = torch.stack([seg[r] for r in plan.collective.ranks])
        grads = ring_backward(plan, qkv[:, 0], qkv[:, 1], qkv[:, 2], out_h, lse_h, d_h, ring=ring, q_pos=q_pos,
                              kv_pos=seg.__getitem__, tag="usp.ring")
        back = to_sequence(plan.collective, torch.stack(grads, dim=1), groups, tag=f"{tag}.bwd.dqkv")
        return back[:, 0], back[:, 1], back[:, 2]
