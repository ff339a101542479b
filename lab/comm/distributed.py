"""One process per rank on torch.distributed (gloo on CPU, nccl with CUDA).

Each process holds one row (`n_local = 1`). Results match `SimulatedCollective`
up to floating-point association (gloo's ring sums in its own order): the tests
hold them to 1e-6. The Ledger is computed the same way in every process.
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

    def _row(self, x):
        if x.shape[0] != 1:
            raise ValueError(f"a distributed rank holds 1 row, got {x.shape[0]}")
        return x[0].contiguous()

    def _gather_rows(self, row):
        out = [torch.empty_like(row) for _ in range(self.world_size)]
        dist.all_gather(out, row, group=self.group)
        return torch.stack(out)

    def all_reduce(self, x, *, op="mean", tag="", record=True):
        if op not in ("sum", "mean"):
            raise ValueError(f"op={op!r} is not supported; allowed: 'sum', 'mean'")
        self._record("all_reduce", x, tag=tag, record=record)
        row = self._row(x).float().clone()
        dist.all_reduce(row, group=self.group)
        if op == "mean":
            row = row / self.world_size
        return row.to(x.dtype).unsqueeze(0)

    def reduce_scatter(self, x, *, op="mean", tag=""):
        p = self.world_size
        if x.shape[1] % p:
            raise ValueError(f"reduce_scatter needs dim 1 ({x.shape[1]}) divisible by world_size={p}")
        self._record("reduce_scatter", x, tag=tag, record=True)
        chunks = list(self._row(x).float().chunk(p, dim=0))
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, [c.contiguous() for c in chunks], group=self.group)
        if op == "mean":
            out = out / p
        return out.to(x.dtype).unsqueeze(0)

    def all_gather(self, x, *, tag="", record=True):
        self._record("all_gather", x, tag=tag, record=record)
        if isinstance(x, Packet):
            return x.map(lambda t: self._gather_rows(self._row(t)).unsqueeze(0))
        return self._gather_rows(self._row(x)).unsqueeze(0)

    def broadcast(self, x, *, src=0, tag=""):
        self._record("broadcast", x, tag=tag, record=True)
        row = self._row(x).clone()
        dist.broadcast(row, src=src, group=self.group)
        return row.unsqueeze(0)

    def all_to_all(self, x, *, tag=""):
        if x.shape[1] != self.world_size:
            raise ValueError(f"all_to_all needs dim 1 ({x.shape[1]}) equal to world_size={self.world_size}")
        self._record("all_to_all", x, tag=tag, record=True)
        row = self._row(x)
        out = torch.empty_like(row)
        dist.all_to_all_single(out, row, group=self.group)
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
