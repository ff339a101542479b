"""DSP — Dynamic Sequence Parallelism: switch which dimension is sharded, with one all-to-all, only when
the next stage needs it.

Paper: Zhao et al., "DSP: Dynamic Sequence Parallelism for Multi-Dimensional Transformers", ICML 2025,
arXiv 2403.10266 (spec B9; code not read).

Multi-dimensional transformers (video: T frames × S spatial tokens) attend along one dimension at a time.
A spatial block attends over S inside each frame; a temporal block over T at each spatial position. So
keep T sharded for spatial blocks (a rank holds T/G frames, every spatial token: no communication), and
before a temporal block switch to S sharded with one all-to-all (a rank holds S/G positions, every frame),
and back after it. Ulysses applied inside each attention would instead send Q, K, V and O both ways
around every attention.

`dsp_block(x)` is one spatial + temporal pair, each a multi-head self-attention with q = k = v = x (the
projections are local and would not change the communication): sharded T → spatial attention → switch
T→S → temporal attention → switch S→T. The switch is differentiable (its adjoint is the same all-to-all
the other way), so the backward runs through the Collective too.

Bytes per rank per spatial+temporal pair: 2·(G−1)/G·(B·T·S·h/G)·b forward and the same backward;
Ulysses inside both attentions: 8 all-to-alls of that size (4 per attention), so DSP/Ulysses = 2/8.

Exactness: E0/E1 (the switches are data movement).
"""
from __future__ import annotations

import torch

from lab.sequence.kernels import attention


def switch(collective, x, *, groups=None, tag: str = "sp.dsp"):
    """(n, B, T/G, S, h) T-sharded -> (n, B, T, S/G, h) S-sharded; differentiable."""
    return _Switch.apply(collective, groups, tag, x, False)


def switch_back(collective, y, *, groups=None, tag: str = "sp.dsp"):
    """(n, B, T, S/G, h) S-sharded -> (n, B, T/G, S, h) T-sharded; differentiable."""
    return _Switch.apply(collective, groups, tag, y, True)


def _t_to_s(collective, x, groups, tag):
    n, b, tl, s, h = x.shape
    g = len(groups[0]) if groups else collective.world_size
    send = x.reshape(n, b, tl, g, s // g, h).permute(0, 3, 1, 2, 4, 5).contiguous()  # (n, G, B, T/G, S/G, h)
    recv = collective.all_to_all(send, groups=groups, tag=tag)  # (n, G: source frames, B, T/G, S/G, h)
    return recv.permute(0, 2, 1, 3, 4, 5).reshape(n, b, g * tl, s // g, h)


def _s_to_t(collective, y, groups, tag):
    n, b, t, sl, h = y.shape
    g = len(groups[0]) if groups else collective.world_size
    send = y.reshape(n, b, g, t // g, sl, h).permute(0, 2, 1, 3, 4, 5).contiguous()  # (n, G, B, T/G, S/G, h)
    recv = collective.all_to_all(send, groups=groups, tag=tag)  # (n, G: source positions, B, T/G, S/G, h)
    return recv.permute(0, 2, 3, 1, 4, 5).reshape(n, b, t // g, g * sl, h)


class _Switch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, collective, groups, tag, x, back):
        ctx.args = (collective, groups, tag, back)
        return (_s_to_t if back else _t_to_s)(collective, x, groups, f"{tag}.fwd")

    @staticmethod
    def backward(ctx, g):
        collective, groups, tag, back = ctx.args
        return None, None, None, (_t_to_s if back else _s_to_t)(collective, g.contiguous(), groups, f"{tag}.bwd"), None


def _heads(x, num_heads):
    """(..., L, h) -> (..., H, L, h/H)."""
    *lead, l, h = x.shape
    return x.reshape(*lead, l, num_heads, h // num_heads).transpose(-3, -2)


def _merge_heads(y):
    *lead, hh, l, d = y.shape
    return y.transpose(-3, -2).reshape(*lead, l, hh * d)


def axis_attention(x, *, axis: int, num_heads: int):
    """Self-attention (q = k = v = x) along `axis` of x (..., T, S, h): axis -3 (T) or -2 (S)."""
    if axis == -3:
        x = x.transpose(-3, -2)  # (..., S, T, h): attend over T for each spatial position
    xh = _heads(x, num_heads)
    y = _merge_heads(attention(xh, xh, xh))
    return y.transpose(-3, -2) if axis == -3 else y


def dsp_block(x, *, collective, num_heads: int, groups=None, tag: str = "sp"):
    """One spatial + temporal pair on T-sharded x (n, B, T/G, S, h) -> (n, B, T/G, S, h)."""
    g = len(groups[0]) if groups else collective.world_size
    if x.dim() != 5 or x.shape[0] != collective.num_local:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected rank-stacked (n, B, T/G, S, h)")
    if x.shape[3] % g or x.shape[4] % num_heads:
        raise ValueError(f"x {tuple(x.shape)}: spatial size must divide by the {g} ranks and hidden size by "
                         f"num_heads={num_heads}")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or inf: expected finite values")
    y = axis_attention(x, axis=-2, num_heads=num_heads)  # spatial: local
    y = switch(collective, y, groups=groups, tag=f"{tag}.dsp.switch")  # (n, B, T, S/G, h)
    y = axis_attention(y, axis=-3, num_heads=num_heads)  # temporal: local
    return switch_back(collective, y, groups=groups, tag=f"{tag}.dsp.switch_back")


def dsp_reference(x, *, num_heads: int):
    """Single device: x (B, T, S, h) -> spatial then temporal attention."""
    return axis_attention(axis_attention(x, axis=-2, num_heads=num_heads), axis=-3, num_heads=num_heads)
