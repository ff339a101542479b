"""One entry point for the softmax-attention methods: `sp_attention(q, k, v, method=..., collective=...)`.

q, k, v are rank-stacked `(n_local, B, H, C, Dh)`: row i holds the C = N/G tokens of rank
`collective.ranks[i]` in the chosen layout (`lab.sequence.layout.shard` builds them from a full tensor).
The result is rank-stacked the same way and differentiable; its backward communicates through the same
Collective. Methods: ring, burst, token_ring, ulysses, usp, lss. (LASP, Star Attention and DSP compute
different things and have their own entry points in `lab.sequence.lasp`, `.star`, `.dsp`.)
"""
from __future__ import annotations

from lab.sequence.burst import BurstAttention
from lab.sequence.common import Plan, SPAttention, check_inputs
from lab.sequence.lss import LSS
from lab.sequence.ring import RingAttention
from lab.sequence.token_ring import TokenRing
from lab.sequence.ulysses import USP, Ulysses

METHODS = {m.name: m for m in (RingAttention, TokenRing, Ulysses, USP, BurstAttention, LSS)}


def method(name: str):
    if name not in METHODS:
        raise ValueError(f"sp_method={name!r} is invalid: expected one of {list(METHODS)}")
    return METHODS[name]


def make_plan(collective, *, causal: bool = False, layout: str = "contiguous", groups=None, tile: int = 0,
              ulysses_degree: int = 0, tag: str = "sp") -> Plan:
    if not isinstance(causal, bool):
        raise ValueError(f"causal={causal!r} is invalid: expected True or False")
    for name, value in (("tile", tile), ("ulysses_degree", ulysses_degree)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid: expected an integer >= 0")
    return Plan(collective, causal=causal, layout=layout, groups=groups, tile=tile, ulysses_degree=ulysses_degree,
                tag=tag)


def sp_attention(q, k, v, *, method: str, collective, causal: bool = False, layout: str = "contiguous",
                 groups=None, tile: int = 0, ulysses_degree: int = 0, tag: str = "sp"):
    """Sequence-parallel softmax attention of rank-stacked q, k, v; see the module docstring."""
    m = globals()["method"](method)
    check_inputs(q, k, v, collective)
    plan = make_plan(collective, causal=causal, layout=layout, groups=groups, tile=tile,
                     ulysses_degree=ulysses_degree, tag=tag)
    plan.pos_of(collective.ranks[0], q.shape[-2])  # validates the layout against the sequence length
    return SPAttention.apply(m, plan, q, k, v)
