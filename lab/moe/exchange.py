"""Token exchange for expert parallelism: an all_to_all_v over the Collective, with autograd and true bytes.

Each local rank has R rows (tokens, or (token, choice) pairs) with a
destination rank and a slot there (which of the destination's experts computes
the row), or no destination (-1: dropped, or computed where it is by a caller
that skips the exchange). A `Plan` sorts every rank's rows by (destination,
slot) and exchanges the counts first: recorded as the tiny all-to-all of P·S
int64 per rank a real system sends (tag `<tag>_counts`). The lab also learns
every rank's counts, (P, P, S), through an all-gather it does not record — a
simulation artifact: rank-stacked buffers must be padded alike everywhere and
every process must record the same Ledger.

The rows then move in one all-to-all whose chunks are padded to the largest
pair count (`cap`): rank-stacked tensors need equal chunk sizes. The Ledger is
charged what an all_to_all_v sends, row bytes × count for every pair (i ≠ j),
as a pairwise schedule on the Topology (P−1 steps, rank i sends to i+k in step
k; empty messages are skipped) — padding is never counted. A row a rank sends
to itself costs nothing.

Autograd: the exchange is a permutation of rows, so its backward is the same
exchange with the counts transposed (recorded with tag `<tag>_bwd`). The same
code runs simulated and on torch.distributed; everything is rank-stacked
(n local ranks, dim 0).
"""
from __future__ import annotations

import numpy as np
import torch

from lab.comm.collective import Collective
from lab.topology import Step


def pairwise_v_cost(topology, nbytes: np.ndarray):
    """Cost of an all_to_all_v where rank i sends nbytes[i, j] bytes to rank j (P×P; the diagonal is free)."""
    p = nbytes.shape[0]
    if topology.star:  # via the server: every rank uploads what it sends, downloads what it receives
        server = topology.num_ranks
        up = [(r, server) for r in range(p)]
        down = [(server, r) for r in range(p)]
        off = nbytes * (1 - np.eye(p))
        return topology.schedule_cost([Step.of(up, off.sum(1)), Step.of(down, off.sum(0))], "star_v")
    steps = []
    for k in range(1, p):  # empty messages are not sent
        pairs = [(r, (r + k) % p) for r in range(p) if nbytes[r, (r + k) % p] > 0]
        steps.append(Step.of(pairs, [nbytes[a, b] for a, b in pairs]) if pairs else None)
    return topology.schedule_cost(steps, "pairwise_v")


def all_to_all_v(coll: Collective, x: torch.Tensor, rows: np.ndarray, *, tag: str) -> torch.Tensor:
    """x (n, P, cap, ...): chunk j of rank i holds rows[i, j] rows (the rest is padding) -> (n, P, cap, ...).
    Recorded as rows × row bytes per pair."""
    row_bytes = int(np.prod(x.shape[3:], dtype=np.int64)) * x.element_size()
    nbytes = rows.astype(np.float64) * row_bytes
    cost = pairwise_v_cost(coll.ledger.topology, nbytes)
    off = nbytes * (1 - np.eye(rows.shape[0]))
    coll.ledger.record("all_to_all", int(off.sum(1).max()), tag=tag, cost=cost)
    return coll.all_to_all(x, tag=tag, record=False)


class _AllToAllV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coll, rows, tag):
        ctx.coll, ctx.rows, ctx.tag = coll, rows, tag
        return all_to_all_v(coll, x, rows, tag=tag)

    @staticmethod
    def backward(ctx, grad):
        return all_to_all_v(ctx.coll, grad.contiguous(), ctx.rows.T.copy(), tag=f"{ctx.tag}_bwd"), None, None, None


def exchange(coll: Collective, x: torch.Tensor, rows: np.ndarray, *, tag: str) -> torch.Tensor:
    """Differentiable `all_to_all_v` (the backward sends the gradients back, counts transposed)."""
    return _AllToAllV.apply(x, coll, rows, tag)


class Plan:
    """The exchange of one layer: dest (n, R) rank of each local row (-1: not sent), slot (n, R) on that rank.

    After construction every process knows `counts` (P, P, S): rows rank i sends to rank j for slot s.
    """

    def __init__(self, coll: Collective, dest: torch.Tensor, slot: torch.Tensor, *, num_slots: int, tag: str):
        self.coll, self.tag, self.num_slots = coll, tag, num_slots
        p, s = coll.world_size, num_slots
        n, r = dest.shape
        valid = dest >= 0
        key = torch.where(valid, dest * s + slot, p * s)  # (n, R): invalid rows sort last
        local = torch.stack([torch.bincount(key[i], minlength=p * s + 1)[:p * s] for i in range(n)]).view(n, p, s)
        # what a real system sends: its P·S counts, one chunk per rank (a tiny all-to-all); the lab also learns
        # every rank's counts (not recorded) so every process pads alike and records the same Ledger
        coll.ledger.record("all_to_all", p * s * 8, tag=f"{tag}_counts")
        self.counts = coll.all_gather(local, record=False)[0].numpy()  # (P, P, S) the same everywhere
        self.rows = self.counts.sum(-1)  # (P, P)
        self.cap = max(int(self.rows.max()), 1)
        # where each local row lands in its rank's send buffer (n, P·cap): chunk dest, position among its rows
        order = torch.argsort(key, dim=1, stable=True)  # (n, R)
        rank_in_sorted = torch.empty_like(order)
        rank_in_sorted.scatter_(1, order, torch.arange(r).expand(n, r).contiguous())
        starts = torch.from_numpy(np.concatenate([np.zeros((p, 1), np.int64), self.rows.cumsum(1)[:, :-1]], 1))
        me = torch.tensor(coll.ranks)
        chunk_start = starts[me].gather(1, dest.clamp(min=0))  # (n, R) first sorted index of the row's chunk
        self.flat = torch.where(valid, dest.clamp(min=0) * self.cap + rank_in_sorted - chunk_start, -1)  # (n, R)
        self.valid = valid

    def received_slots(self) -> torch.Tensor:
        """(n, P, cap) slot of each received row (-1: padding), from the counts alone."""
        out = torch.full((len(self.coll.ranks), self.coll.world_size, self.cap), -1, dtype=torch.long)
        for i, me in enumerate(self.coll.ranks):
            for src in range(self.coll.world_size):
                ids = np.repeat(np.arange(self.num_slots), self.counts[src, me])
                out[i, src, :len(ids)] = torch.from_numpy(ids)
        return out

    def send(self, x: torch.Tensor, *, tag: str | None = None) -> torch.Tensor:
        """x (n, R, h) -> what each rank receives (n, P, cap, h), rows grouped by slot within each source."""
        n, _, h = x.shape
        buf = x.new_zeros(n, self.coll.world_size * self.cap, h)
        ii, rr = self.valid.nonzero(as_tuple=True)
        buf = buf.index_put((ii, self.flat[ii, rr]), x[ii, rr])
        return exchange(self.coll, buf.view(n, self.coll.world_size, self.cap, h), self.rows, tag=tag or self.tag)

    def send_back(self, y: torch.Tensor, *, tag: str | None = None) -> torch.Tensor:
        """y (n, P, cap, h) results at the received positions -> (n, R, h) at the rows' origins (0 where not sent)."""
        n = y.shape[0]
        back = exchange(self.coll, y, self.rows.T.copy(), tag=tag or f"{self.tag}_back")
        back = back.reshape(n, self.coll.world_size * self.cap, -1)
        out = back.gather(1, self.flat.clamp(min=0).unsqueeze(-1).expand(-1, -1, back.shape[-1]))
        return out * self.valid.unsqueeze(-1)
