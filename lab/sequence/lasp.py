"""LASP: linear-attention sequence parallelism by passing the K/V state down a chain of ranks.

Paper: Sun et al., "Linear Attention Sequence Parallelism", arXiv 2404.02882; code OpenNLPLab/LASP
(`lasp_naive.py`) (spec B6).

Causal linear attention with a decay λ_h = e^{−s_h} per head (TransNormer / Lightning Attention):
o_i = Σ_{j≤i} λ^{i−j} (q_i·k_j) v_j. Its right product summarizes a whole prefix as one d × e state, so
rank t of the SP group (chunk t, C tokens, local index j) needs only the state KV_{t−1} of the chunks
before it:

    O_t  = [(Q_t K_tᵀ) ⊙ M] V_t + diag(λ^{j+1}) Q_t KV_{t−1},   M_ij = λ^{i−j} for i ≥ j, else 0
    KV_t = λ^C KV_{t−1} + (diag(λ^{C−1−j}) K_t)ᵀ V_t

Forward: the state (fp32, B·H·d·e) goes down the chain 0 → 1 → … → G−1, one hop at a time (G−1
sequential hops, each with one sender per group: `send_recv`). Backward: the reverse chain carries
dKV_{t−1} = λ^C dKV_t + (diag(λ^{j+1}) Q_t)ᵀ dO_t from t to t−1; with it, the local gradients are
dQ = (dO Vᵀ ⊙ M) K + diag(λ^{j+1}) dO KV_{t−1}ᵀ, dK = (dO Vᵀ ⊙ M)ᵀ Q + diag(λ^{C−1−j}) V dKV_tᵀ,
dV = ((Q Kᵀ) ⊙ M)ᵀ dO + diag(λ^{C−1−j}) K dKV_t.

Bytes per rank per layer: one send of B·H·d·e·4 bytes forward and one backward, except the last rank
(forward) and the first (backward): independent of the sequence length N. Decay slopes s_h follow
ALiBi's geometric rule 2^{−8(h+1)/H} (LASP's `build_slope_tensor` for a power-of-two H). Needs the
contiguous layout (the chain is the sequence order).

Exactness: E1 against the single-device masked-decay formula (`linear_attention`).
"""
from __future__ import annotations

import torch

from lab.sequence.common import Plan


def slopes(num_heads: int) -> torch.Tensor:
    """(H,) decay rates s_h = 2^{−8(h+1)/H}; λ_h = exp(−s_h)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


def decay_mask(s: torch.Tensor, n: int) -> torch.Tensor:
    """(H, n, n) λ^{i−j} for i ≥ j else 0."""
    i = torch.arange(n)
    diff = (i[:, None] - i[None, :]).float()
    return torch.where(diff >= 0, torch.exp(-s[:, None, None] * diff.clamp(min=0)), torch.zeros(()))


def linear_attention(q, k, v, s: torch.Tensor):
    """Reference on one device: q, k (B, H, N, d), v (B, H, N, e) -> (B, H, N, e), differentiable."""
    return ((q @ k.transpose(-2, -1)) * decay_mask(s, q.shape[-2])) @ v


def _decays(s, c):
    j = torch.arange(c, dtype=torch.float32)
    lam = torch.exp(-s)[:, None]  # (H, 1)
    q_dec = lam ** (j + 1)  # (H, C): λ^{j+1}
    k_dec = lam ** (c - 1 - j)  # (H, C): λ^{C−1−j}
    return q_dec[..., None], k_dec[..., None], torch.exp(-s * c)[:, None, None]  # (H, C, 1) x2, (H, 1, 1)


def _chain(plan: Plan, x, hop: int, reverse: bool, tag: str):
    """Send row of group position `hop` to position hop+1 (or hop−1 when reversed) in every group."""
    pairs = [(g[hop], g[hop - 1] if reverse else g[hop + 1]) for g in plan.groups]
    return plan.collective.send_recv(x, pairs=pairs, tag=tag)


class _LASP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, s, q, k, v):
        c, g = q.shape[-2], plan.group_size
        q_dec, k_dec, lam_c = _decays(s, c)
        mask = decay_mask(s, c)  # (H, C, C)
        local = (k * k_dec).transpose(-2, -1) @ v  # (n, B, H, d, e): this chunk's own state term
        pos = torch.tensor([plan.position(r) for r in plan.collective.ranks])
        prev = torch.zeros(local.shape, dtype=torch.float32)  # KV_{t−1} (zero for the first chunk)
        for hop in range(g - 1):
            state = lam_c * prev + local  # KV_t, meaningful on the rank at position `hop`
            got = _chain(plan, state, hop, False, f"{plan.tag}.lasp.fwd.state")
            prev = torch.where((pos == hop + 1).view(-1, 1, 1, 1, 1), got, prev)
        out = ((q @ k.transpose(-2, -1)) * mask) @ v + (q * q_dec) @ prev.to(q.dtype)
        ctx.plan = plan
        ctx.save_for_backward(s, q, k, v, prev)
        return out

    @staticmethod
    def backward(ctx, d_out):
        plan = ctx.plan
        s, q, k, v, prev = ctx.saved_tensors
        c, g = q.shape[-2], plan.group_size
        q_dec, k_dec, lam_c = _decays(s, c)
        mask = decay_mask(s, c)
        local = (q * q_dec).transpose(-2, -1) @ d_out  # (n, B, H, d, e)
        pos = torch.tensor([plan.position(r) for r in plan.collective.ranks])
        d_next = torch.zeros(local.shape, dtype=torch.float32)  # dKV_t (zero for the last chunk)
        for hop in range(g - 1, 0, -1):
            d_state = lam_c * d_next + local  # dKV_{t−1}, meaningful on the rank at position `hop`
            got = _chain(plan, d_state, hop, True, f"{plan.tag}.lasp.bwd.dstate")
            d_next = torch.where((pos == hop - 1).view(-1, 1, 1, 1, 1), got, d_next)
        d_next = d_next.to(q.dtype)
        dov = (d_out @ v.transpose(-2, -1)) * mask  # (n, B, H, C, C)
        dq = dov @ k + (d_out @ prev.to(q.dtype).transpose(-2, -1)) * q_dec
        dk = dov.transpose(-2, -1) @ q + (v @ d_next.transpose(-2, -1)) * k_dec
        dv = ((q @ k.transpose(-2, -1)) * mask).transpose(-2, -1) @ d_out + (k * k_dec) @ d_next
        return None, None, dq, dk, dv


def lasp_attention(q, k, v, *, collective, decay: torch.Tensor | None = None, groups=None, tag: str = "sp"):
    """LASP over rank-stacked q, k (n, B, H, C, d), v (n, B, H, C, e) in the contiguous layout; decay
    rates (H,) default to `slopes(H)`. Differentiable; both passes talk through `collective`."""
    if q.dim() != 5 or k.shape != q.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected rank-stacked "
                         "(n, B, H, C, d) for q and k and (n, B, H, C, e) for v")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or inf: expected finite values")
    s = slopes(q.shape[2]) if decay is None else decay.detach().float()
    if s.shape != (q.shape[2],) or not bool((s >= 0).all()):
        raise ValueError(f"decay has shape {tuple(s.shape)}: expected ({q.shape[2]},) rates >= 0")
    return _LASP.apply(Plan(collective, groups=groups, tag=tag), s, q, k, v)
