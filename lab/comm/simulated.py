"""All N ranks in one process: exact collectives on the leading rank axis."""
from __future__ import annotations

import torch

from lab.comm.collective import Collective, mixing_pairs, ordered_sum
from lab.comm.ledger import Ledger
from lab.comm.packet import Packet


class SimulatedCollective(Collective):
    def __init__(self, *, world_size: int, ledger: Ledger):
        super().__init__(world_size=world_size, ranks=list(range(world_size)), ledger=ledger)

    def _check(self, x: torch.Tensor):
        if x.shape[0] != self.world_size:
            raise ValueError(f"rank-stacked tensor has {x.shape[0]} rows, expected world_size={self.world_size}")

    def all_reduce(self, x, *, op="mean", tag="", record=True):
        self._check(x)
        self._record("all_reduce", x, tag=tag, record=record)
        acc = ordered_sum(x)
        if op == "mean":
            acc = acc / self.world_size
        elif op != "sum":
            raise ValueError(f"op={op!r} is not supported; allowed: 'sum', 'mean'")
        return acc.unsqueeze(0).expand(x.shape)

    def reduce_scatter(self, x, *, op="mean", tag=""):
        self._check(x)
        p = self.world_size
        if x.shape[1] % p:
            raise ValueError(f"reduce_scatter needs dim 1 ({x.shape[1]}) divisible by world_size={p}")
        self._record("reduce_scatter", x, tag=tag, record=True)
        full = self.all_reduce(x, op=op, record=False)[0]
        return full.reshape(p, x.shape[1] // p, *x.shape[2:])

    def all_gather(self, x, *, tag="", record=True):
        if isinstance(x, Packet):
            self._record("all_gather", x, tag=tag, record=record)
            return x.map(lambda t: self.all_gather(t, record=False))
        self._check(x)
        self._record("all_gather", x, tag=tag, record=record)
        return x.unsqueeze(0).expand(self.world_size, *x.shape)

    def broadcast(self, x, *, src=0, tag=""):
        self._check(x)
        self._record("broadcast", x, tag=tag, record=True)
        return x[src].unsqueeze(0).expand(x.shape)

    def all_to_all(self, x, *, tag=""):
        self._check(x)
        if x.shape[1] != self.world_size:
            raise ValueError(f"all_to_all needs dim 1 ({x.shape[1]}) equal to world_size={self.world_size}")
        self._record("all_to_all", x, tag=tag, record=True)
        return x.transpose(0, 1).contiguous()

    def shift(self, x, *, offset=1, tag=""):
        self._check(x)
        p = self.world_size
        self.record_peers([(r, (r + offset) % p) for r in range(p)], x[0].numel() * x.element_size(),
                          op="shift", tag=tag)
        return torch.roll(x, shifts=offset, dims=0)

    def server_reduce(self, x, *, weights, ranks, tag=""):
        self._check(x)
        ranks = sorted(ranks)
        self._record("server_gather", x, tag=tag, record=True, ranks=ranks)
        return ordered_sum(x[ranks], weights[ranks])

    def mix(self, x, *, weights, tag=""):
        self._check(x)
        self.record_peers(mixing_pairs(weights), x[0].numel() * x.element_size(), op="mix", tag=tag)
        return torch.stack([ordered_sum(x, weights[i]) for i in range(self.world_size)])
