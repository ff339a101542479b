"""Block attention math shared by every sequence-parallel method: partial results with their
log-sum-exp (LSE), the exact LSE merge, and the flash-style backward of one block.

All functions work on rank-stacked blocks: q `(n, B, H, Cq, Dh)`, k and v `(n, B, H, Ck, Dh)`, and an
optional boolean mask `(n, Cq, Ck)` (True = the query sees the key; one mask per rank, shared by batch and
heads). A query row that sees no key of a block gets out 0 and lse −inf, so merging it is a no-op.

Merge (spec B2, ring-flash-attention's `utils.py`): lse' = logaddexp(lse, l_b) and
out' = e^{lse−lse'}·out + e^{l_b−lse'}·o_b (the sigmoid form the code uses is the same function).

Backward of one block against the *global* (out, lse) of the query rows (FlashAttention-2's rule): with
P = exp(S − lse) and D = rowsum(dO ∘ out), dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − D), dQ = dS K·scale,
dK = dSᵀ Q·scale. Summing the blocks' dQ, dK, dV gives the gradient of full attention.

`tile` > 0 runs the same math over tiles of `tile` queries × `tile` keys with the online merge inside the
block, so no score matrix larger than tile × tile exists (BurstAttention's local attention optimization).
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(n, Cq), (n, Ck) absolute positions -> (n, Cq, Ck) bool: a query sees keys at or before it."""
    return q_pos.unsqueeze(-1) >= k_pos.unsqueeze(-2)


def _scores(q, k, mask):
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (n, B, H, Cq, Ck)
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None], NEG_INF)
    return s


def block_attention(q, k, v, mask=None, *, tile: int = 0):
    """Softmax attention of q against one K/V block: (out (n, B, H, Cq, Dh), lse (n, B, H, Cq))."""
    if tile:
        return _tiled_attention(q, k, v, mask, tile)
    s = _scores(q, k, mask)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)  # (n, B, H, Cq, 1)
    seen = l > 0
    out = torch.where(seen, (p @ v) / torch.where(seen, l, torch.ones_like(l)), torch.zeros_like(q))
    lse = torch.where(seen, m + torch.log(torch.where(seen, l, torch.ones_like(l))), torch.full_like(l, NEG_INF))
    return out, lse.squeeze(-1)


def merge(out, lse, b_out, b_lse):
    """LSE merge of a partial (b_out, b_lse) into (out, lse); rows at −inf on both sides stay empty."""
    new = torch.logaddexp(lse, b_lse)
    fin = torch.isfinite(new)
    safe = torch.where(fin, new, torch.zeros_like(new))
    w1 = torch.where(fin & torch.isfinite(lse), torch.exp(lse - safe), torch.zeros_like(new))
    w2 = torch.where(fin & torch.isfinite(b_lse), torch.exp(b_lse - safe), torch.zeros_like(new))
    return w1.unsqueeze(-1) * out + w2.unsqueeze(-1) * b_out, new


def empty_partial(q):
    """(out, lse) of a query block that has seen nothing yet: zeros and −inf."""
    return torch.zeros_like(q), torch.full(q.shape[:-1], NEG_INF, dtype=q.dtype)


def block_grads(q, k, v, mask, d_out, lse, delta, *, tile: int = 0):
    """(dq, dk, dv) of one block given the global lse (n, B, H, Cq) and delta = rowsum(dO ∘ out)."""
    if tile:
        return _tiled_grads(q, k, v, mask, d_out, lse, delta, tile)
    scale = q.shape[-1] ** -0.5
    s = _scores(q, k, mask)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1)
    p = torch.where(torch.isfinite(s), torch.exp(s - safe), torch.zeros_like(s))  # (n, B, H, Cq, Ck)
    dv = p.transpose(-2, -1) @ d_out
    ds = p * (d_out @ v.transpose(-2, -1) - delta.unsqueeze(-1))
    return (ds @ k) * scale, (ds.transpose(-2, -1) @ q) * scale, dv


def _tiles(n: int, tile: int):
    return [(a, min(a + tile, n)) for a in range(0, n, tile)]


def _tiled_attention(q, k, v, mask, tile):
    outs, lses = [], []
    for a, b in _tiles(q.shape[-2], tile):
        out, lse = empty_partial(q[..., a:b, :])
        for c, d in _tiles(k.shape[-2], tile):
            sub = None if mask is None else mask[:, a:b, c:d]
            if sub is not None and not bool(sub.any()):
                continue
            out, lse = merge(out, lse, *block_attention(q[..., a:b, :], k[..., c:d, :], v[..., c:d, :], sub))
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


def _tiled_grads(q, k, v, mask, d_out, lse, delta, tile):
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for a, b in _tiles(q.shape[-2], tile):
        for c, d in _tiles(k.shape[-2], tile):
            sub = None if mask is None else mask[:, a:b, c:d]
            if sub is not None and not bool(sub.any()):
                continue
            gq, gk, gv = block_grads(q[..., a:b, :], k[..., c:d, :], v[..., c:d, :], sub, d_out[..., a:b, :],
                                     lse[..., a:b], delta[..., a:b])
            dq[..., a:b, :] += gq
            dk[..., c:d, :] += gk
            dv[..., c:d, :] += gv
    return dq, dk, dv


def attention(q, k, v, *, causal: bool = False):
    """Reference full attention on one device: q, k, v (..., N, Dh) -> (..., N, Dh), differentiable."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), NEG_INF)
    return s.softmax(dim=-1) @ v


def visible_pairs(mask, n_rows: int, cq: int, ck: int) -> torch.Tensor:
    """(n,) (query, key) pairs a block computes per rank: the mask's count, or Cq·Ck without one."""
    if mask is None:
        return torch.full((n_rows,), cq * ck, dtype=torch.long)
    return mask.flatten(1).sum(dim=1)
