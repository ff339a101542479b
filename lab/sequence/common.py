"""What every sequence-parallel attention method shares: the call's plan, rings inside SP groups, and
the autograd Function that runs a method's explicit forward and backward.

A method is a class with two static methods over rank-stacked tensors `(n_local, B, H, C, Dh)`:

    forward(plan, q, k, v) -> (out, saved)      # saved: a tuple of tensors kept for the backward
    backward(plan, saved, d_out) -> (dq, dk, dv)

Both talk to other ranks only through `plan.collective`, so the backward communicates explicitly (as the
papers' implementations do) and runs on gloo as well as simulated; every byte of both passes lands in
the Ledger. `SPAttention.apply(method, plan, q, k, v)` wires them into autograd; `VmapEscape` lets a
per-rank model running under `torch.func.vmap` (the tiny GPT's sequence-parallel mode) call a method on
the whole rank-stacked tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lab.sequence.layout import check_layout, positions


@dataclass
class Plan:
    """One sequence-parallel attention call: who talks, and how the sequence is laid out.

    `groups`: the SP groups (a partition of all ranks into equal groups, ascending); None = one group of
    every rank. `tile` (burst): tile size of the local attention (0 = whole blocks). `ulysses_degree`
    (usp): ranks per all-to-all group inside an SP group (0 = the topology's ranks per node, capped by
    the SP group). `tag` prefixes the Ledger tags.
    """

    collective: object
    causal: bool = False
    layout: str = "contiguous"
    groups: list | None = None
    tile: int = 0
    ulysses_degree: int = 0
    tag: str = "sp"
    _pos: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        world = self.collective.world_size
        if self.groups is None:
            self.groups = [list(range(world))]
        self.groups = [sorted(int(r) for r in g) for g in self.groups]
        if sorted(r for g in self.groups for r in g) != list(range(world)) or len({len(g) for g in self.groups}) != 1:
            raise ValueError(f"groups={self.groups!r} is invalid: expected a partition of the {world} ranks into "
                             "equal groups")

    @property
    def group_size(self) -> int:
        return len(self.groups[0])

    @property
    def coll_groups(self):
        """`groups` as the Collective takes it (None for one group of every rank)."""
        return None if len(self.groups) == 1 else self.groups

    def group_of(self, rank: int) -> list[int]:
        return next(g for g in self.groups if rank in g)

    def position(self, rank: int) -> int:
        return self.group_of(rank).index(rank)

    def pos_of(self, rank: int, chunk: int) -> torch.Tensor:
        """(C,) absolute positions of the tokens `rank` holds when each rank holds `chunk` tokens."""
        key = (chunk, self.group_size)
        if key not in self._pos:
            check_layout(self.layout, chunk * self.group_size, self.group_size)
            self._pos[key] = positions(chunk * self.group_size, self.group_size, self.layout)
        return self._pos[key][self.position(rank)]

    def local_pos(self, chunk: int) -> torch.Tensor:
        """(n_local, C) positions of this process's rows."""
        return torch.stack([self.pos_of(r, chunk) for r in self.collective.ranks])

    def mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """(n, Cq, Ck) causal mask, or None when not causal."""
        if not self.causal:
            return None
        return q_pos.unsqueeze(-1) >= k_pos.unsqueeze(-2)


class RingComm:
    """Point-to-point rings: `rings` are lists of ranks in ring order, together covering every rank once.

    `send(x, offset)` moves every row `offset` places along its ring (a world `shift` when the rings are
    one ring of all ranks or a fixed stride over them, else `send_recv` with the ring's pairs);
    `src(step)` gives, per local row, the rank whose data a row holds after `step` sends by +1.
    """

    def __init__(self, collective, rings: list[list[int]]):
        self.collective = collective
        self.rings = [list(r) for r in rings]
        self.size = len(self.rings[0])
        self._where = {r: (i, j) for i, ring in enumerate(self.rings) for j, r in enumerate(ring)}

    def member(self, rank: int, offset: int) -> int:
        i, j = self._where[rank]
        return self.rings[i][(j + offset) % self.size]

    def src(self, step: int) -> list[int]:
        return [self.member(r, -step) for r in self.collective.ranks]

    def send(self, x: torch.Tensor, *, offset: int = 1, tag: str = "") -> torch.Tensor:
        if offset % self.size == 0:
            return x
        world = self.collective.world_size
        pairs = [(r, self.member(r, offset)) for ring in self.rings for r in ring]
        strides = {(d - s) % world for s, d in pairs}
        if len(strides) == 1:
            return self.collective.shift(x, offset=strides.pop(), tag=tag)
        return self.collective.send_recv(x, pairs=pairs, tag=tag)


def group_rings(plan: Plan) -> RingComm:
    """One ring per SP group, in group order."""
    return RingComm(plan.collective, plan.groups)


def delta(d_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """rowsum(dO ∘ out) (n, B, H, C): the softmax backward's correction term."""
    return (d_out * out).sum(dim=-1)


def check_inputs(q, k, v, collective) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 5:
            raise ValueError(f"{name} has shape {tuple(t.shape)}: expected rank-stacked (n, B, H, C, Dh)")
        if t.shape[0] != collective.num_local:
            raise ValueError(f"{name} has {t.shape[0]} rows: expected one per local rank ({collective.num_local})")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or inf: expected finite values")
    if k.shape != v.shape or q.shape[:3] != k.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit together: expected "
                         "the same (n, B, H, ·, Dh) (multi-head attention; repeat grouped K/V heads first)")


class SPAttention(torch.autograd.Function):
    """Autograd over a method's explicit forward and backward (both communicate through the Collective)."""

    @staticmethod
    def forward(ctx, method, plan, q, k, v):
        out, saved = method.forward(plan, q.detach(), k.detach(), v.detach())
        ctx.method, ctx.plan = method, plan
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, d_out):
        dq, dk, dv = ctx.method.backward(ctx.plan, ctx.saved_tensors, d_out.contiguous())
        return None, None, dq, dk, dv


class VmapEscape(torch.autograd.Function):
    """`SPAttention` callable from inside `torch.func.vmap` over ranks: its vmap rule hands the method the
    whole rank-stacked tensors (the batch dimension is the rank axis)."""

    @staticmethod
    def forward(method, plan, q, k, v):
        return SPAttention.apply(method, plan, q, k, v)

    @staticmethod
    def setup_context(ctx, inputs, output):
        raise RuntimeError("VmapEscape is for use under torch.func.vmap over the rank axis")

    @staticmethod
    def backward(ctx, d_out):
        raise RuntimeError("VmapEscape is for use under torch.func.vmap over the rank axis")

    @staticmethod
    def vmap(info, in_dims, method, plan, q, k, v):
        q, k, v = (t.movedim(d, 0) for t, d in zip((q, k, v), in_dims[2:]))
        return SPAttention.apply(method, plan, q, k, v), 0
