"""One process per rank on torch.distributed (gloo on CPU, nccl with CUDA).

Each process holds one row (`n_local = 1`). Results match `SimulatedCollective`
up to floating-point association (gloo's ring sums in its own order): the tests
hold them to 1e-6. The Ledger is computed the same way in every process.

Sub-groups (`groups=`) become `torch.distributed` groups made with
`dist.new_group`, cached by their layout. Every process creates every group of a
layout, in list order, the first time the layout is used; since every process
issues the same collectives in the same order, the groups are created in the
same order everywhere, as `new_group` requires.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lab.comm.collective import Collective, mixing_pairs, ordered_sum
from lab.comm.ledger import Ledger
from lab.comm.packet import Packet


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world_size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError("backend='distributed' needs torchrun (RANK/WORLD_SIZE unset); e.g. "
                             "torchrun --nproc-per-node 4 -m lab.cli run --backend distributed ...")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


class DistributedCollective(Collective):
    def __init__(self, *, ledger: Ledger, group=None):
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        super().__init__(world_size=world, ranks=[rank], ledger=ledger)
        self.rank = rank
        self._subgroups: dict[tuple, object] = {}

    def _pg(self, groups):
        """The process group of this rank's group in `groups` (validated), creating the layout's groups once."""
        if groups is None:
            return self.group
        key = tuple(tuple(g) for g in groups)
        if key not in self._subgroups:
            mine = None
            for g in groups:  # every process creates every group, in the same order
                members = g if self.group is None else [dist.get_global_rank(self.group, r) for r in g]
                pg = dist.new_group(members)
                if self.rank in g:
                    mine = pg
            self._subgroups[key] = mine
        return self._subgroups[key]

    def _size(self, groups) -> int:
        return self.world_size if groups is None else len(groups[0])

    def _row(self, x):
        if x.shape[0] != 1:
            raise ValueError(f"a distributed rank holds 1 row, got {x.shape[0]}")
        return x[0].contiguous()

    def _gather_rows(self, row):
        out = [torch.empty_like(row) for _ in range(self.world_size)]
        dist.all_gather(out, row, group=self.group)
        return torch.stack(out)

    def all_reduce(self, x, *, op="mean", tag="", record=True, groups=None):
        if op not in ("sum", "mean"):
            raise ValueError(f"op={op!r} is not supported; allowed: 'sum', 'mean'")
        groups = self._groups(groups)
        self._record("all_reduce", x, tag=tag, record=record, groups=groups)
        row = self._row(x).to(torch.promote_types(x.dtype, torch.float32)).clone()  # fp32, or fp64 as given
        dist.all_reduce(row, group=self._pg(groups))
        if op == "mean":
            row.div_(self._size(groups))
        return row.to(x.dtype).unsqueeze(0)

    def reduce_scatter(self, x, *, op="mean", tag="", groups=None):
        groups = self._groups(groups)
        p = self._size(groups)
        if x.shape[1] % p:
            raise ValueError(f"reduce_scatter needs dim 1 ({x.shape[1]}) divisible by the group size {p}")
        self._record("reduce_scatter", x, tag=tag, record=True, groups=groups)
        chunks = list(self._row(x).float().chunk(p, dim=0))
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, [c.contiguous() for c in chunks], group=self._pg(groups))
        if op == "mean":
            out.div_(p)
        return out.to(x.dtype).unsqueeze(0)

    def all_gather(self, x, *, tag="", record=True, groups=None):
        groups = self._groups(groups)
        self._record("all_gather", x, tag=tag, record=record, groups=groups)
        if isinstance(x, Packet):
            return x.map(lambda t: self._gather_into(self._row(t), groups).unsqueeze(0))
        return self._gather_into(self._row(x), groups).unsqueeze(0)

    def _gather_into(self, row, groups):
        """(…) -> (G, …): all_gather into views of one output buffer (gloo's all_gather_into_tensor would
        stage the output in a second buffer of the same size)."""
        out = torch.empty(self._size(groups), *row.shape, dtype=row.dtype)
        dist.all_gather(list(out.unbind(0)), row.contiguous(), group=self._pg(groups))
        return out

    def broadcast(self, x, *, src=0, tag=""):
        self._record("broadcast", x, tag=tag, record=True)
        row = self._row(x).clone()
        dist.broadcast(row, src=src, group=self.group)
        return row.unsqueeze(0)

    def all_to_all(self, x, *, tag="", groups=None, record=True):
        groups = self._groups(groups)
        self._record("all_to_all", x, tag=tag, record=record, groups=groups)
        if isinstance(x, Packet):
            return x.map(lambda t: self._all_to_all(t, groups))
        return self._all_to_all(x, groups)

    def _all_to_all(self, x, groups):
        p = self._size(groups)
        if x.shape[1] != p:
            raise ValueError(f"all_to_all needs dim 1 ({x.shape[1]}) equal to the group size {p}")
        row = self._row(x)
        out = torch.empty_like(row)
        dist.all_to_all_single(out, row, group=self._pg(groups))
        return out.unsqueeze(0)

    def shift(self, x, *, offset=1, tag=""):
        p = self.world_size
        self.record_peers([(r, (r + offset) % p) for r in range(p)], x[0].numel() * x.element_size(),
                          op="shift", tag=tag)
        row = self._row(x)
        out = torch.empty_like(row)
        ops = [dist.P2POp(dist.isend, row, (self.rank + offset) % p, group=self.group),
               dist.P2POp(dist.irecv, out, (self.rank - offset) % p, group=self.group)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        return out.unsqueeze(0)

    def send_recv(self, x, *, pairs, tag=""):
        pairs = self._check_pairs(pairs)
        self.record_peers(pairs, x[0].numel() * x.element_size(), op="send_recv", tag=tag)
        row = self._row(x)
        out = torch.zeros_like(row)
        ops = [dist.P2POp(dist.isend, row, d, group=self.group) for s, d in pairs if s == self.rank and d != s]
        ops += [dist.P2POp(dist.irecv, out, s, group=self.group) for s, d in pairs if d == self.rank and d != s]
        if any(s == d == self.rank for s, d in pairs):
            out.copy_(row)
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        return out.unsqueeze(0)

    def server_reduce(self, x, *, weights, ranks, tag=""):
        """The server lives on rank 0: gather there, reduce in ascending order, mirror to every process."""
        ranks = sorted(ranks)
        self._record("server_gather", x, tag=tag, record=True, ranks=ranks)
        row = self._row(x)
        gathered = [torch.empty_like(row) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(row, gathered, dst=0, group=self.group)
        agg = ordered_sum(torch.stack(gathered)[ranks], weights[ranks]) if self.rank == 0 else torch.empty_like(row)
        dist.broadcast(agg, src=0, group=self.group)
        return agg

    def mix(self, x, *, weights, tag=""):
        self.record_peers(mixing_pairs(weights), x[0].numel() * x.element_size(), op="mix", tag=tag)
        rows = self._gather_rows(self._row(x))  # a reference implementation: neighbours' rows via all_gather
        return ordered_sum(rows, weights[self.rank]).unsqueeze(0)
