"""All N ranks in one process: exact collectives on the leading rank axis."""
from __future__ import annotations

import torch

from lab.comm.collective import Collective, mixing_pairs, ordered_sum, reduction_dtype
from lab.comm.ledger import Ledger
from lab.comm.packet import Packet


class SimulatedCollective(Collective):
    def __init__(self, *, world_size: int, ledger: Ledger):
        super().__init__(world_size=world_size, ranks=list(range(world_size)), ledger=ledger)

    def _check(self, x: torch.Tensor):
        if x.shape[0] != self.world_size:
            raise ValueError(f"rank-stacked tensor has {x.shape[0]} rows, expected world_size={self.world_size}")

    def all_reduce(self, x, *, op="mean", tag="", record=True, groups=None):
        self._check(x)
        acc = reduction_dtype(x, op)
        groups = self._groups(groups)
        self._record("all_reduce", x, tag=tag, record=record, groups=groups)
        if groups is not None:
            out = x.new_empty(x.shape)
            for g in groups:
                out[g] = _reduce(x[g], op, acc).to(x.dtype).unsqueeze(0)
            return out
        return _reduce(x, op, acc).to(x.dtype).unsqueeze(0).expand(x.shape)

    def reduce_scatter(self, x, *, op="mean", tag="", groups=None):
        self._check(x)
        reduction_dtype(x, op)
        groups = self._groups(groups)
        p = self.world_size if groups is None else len(groups[0])
        if x.shape[1] % p:
            raise ValueError(f"reduce_scatter needs dim 1 ({x.shape[1]}) divisible by the group size {p}")
        self._record("reduce_scatter", x, tag=tag, record=True, groups=groups)
        if groups is None:
            full = self.all_reduce(x, op=op, record=False)[0]
            return full.reshape(p, x.shape[1] // p, *x.shape[2:])
        full = self.all_reduce(x, op=op, record=False, groups=groups)  # (P, G*c, ...)
        chunks = full.reshape(self.world_size, p, x.shape[1] // p, *x.shape[2:])
        pos = torch.tensor([self.group_of(r, groups).index(r) for r in range(self.world_size)])
        return chunks[torch.arange(self.world_size), pos]

    def all_gather(self, x, *, tag="", record=True, groups=None):
        groups = self._groups(groups)
        if isinstance(x, Packet):
            self._record("all_gather", x, tag=tag, record=record, groups=groups)
            return x.map(lambda t: self.all_gather(t, record=False, groups=groups))
        self._check(x)
        self._record("all_gather", x, tag=tag, record=record, groups=groups)
        if groups is not None:
            return torch.stack([x[self.group_of(r, groups)] for r in range(self.world_size)])
        return x.unsqueeze(0).expand(self.world_size, *x.shape)

    def broadcast(self, x, *, src=0, tag=""):
        self._check(x)
        self._check_src(src)
        self._record("broadcast", x, tag=tag, record=True)
        return x[src].unsqueeze(0).expand(x.shape)

    def all_to_all(self, x, *, tag="", groups=None, record=True):
        groups = self._groups(groups)
        if isinstance(x, Packet):
            self._record("all_to_all", x, tag=tag, record=record, groups=groups)
            return x.map(lambda t: self._all_to_all(t, groups))
        self._record("all_to_all", x, tag=tag, record=record, groups=groups)
        return self._all_to_all(x, groups)

    def _all_to_all(self, x, groups):
        self._check(x)
        p = self.world_size if groups is None else len(groups[0])
        if x.shape[1] != p:
            raise ValueError(f"all_to_all needs dim 1 ({x.shape[1]}) equal to the group size {p}")
        if groups is None:
            return x.transpose(0, 1).contiguous()
        out = torch.empty_like(x)
        for g in groups:
            out[g] = x[g].transpose(0, 1)
        return out

    def shift(self, x, *, offset=1, tag=""):
        self._check(x)
        offset = self._check_offset(offset)
        p = self.world_size
        self.record_peers([(r, (r + offset) % p) for r in range(p)], x[0].numel() * x.element_size(),
                          op="shift", tag=tag)
        return torch.roll(x, shifts=offset, dims=0)

    def send_recv(self, x, *, pairs, tag=""):
        self._check(x)
        pairs = self._check_pairs(pairs)
        self.record_peers(pairs, x[0].numel() * x.element_size(), op="send_recv", tag=tag)
        out = torch.zeros_like(x)
        if pairs:
            src, dst = (list(v) for v in zip(*pairs))
            out[dst] = x[src]
        return out

    def server_reduce(self, x, *, weights, ranks, tag=""):
        self._check(x)
        ranks = sorted(ranks)
        self._record("server_gather", x, tag=tag, record=True, ranks=ranks)
        if ranks == list(range(self.world_size)):  # every rank: the rows as they are, no gathered copy
            return ordered_sum(x, weights)
        return ordered_sum(x[ranks], weights[ranks])

    def mix(self, x, *, weights, tag=""):
        self._check(x)
        self.record_peers(mixing_pairs(weights), x[0].numel() * x.element_size(), op="mix", tag=tag)
        return torch.stack([ordered_sum(x, weights[i]) for i in range(self.world_size)])


def _reduce(rows: torch.Tensor, op: str, acc: torch.dtype) -> torch.Tensor:
    """(k, ...) -> (...): the sum (or mean) of the rows in dtype `acc` (floats: ascending rank order; integers:
    exact in int64, so the order does not matter)."""
    total = ordered_sum(rows.to(acc)) if acc.is_floating_point else rows.to(acc).sum(0)
    return total / rows.shape[0] if op == "mean" else total
