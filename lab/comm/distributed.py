"""One process per rank on torch.distributed (gloo on CPU, nccl with CUDA).

Each process holds one row (`n_local = 1`). Results match `SimulatedCollective`
on every input both accept, in the same dtype (`lab.comm.collective.reduction_dtype`;
tests/test_collective_parity.py), up to floating-point association (gloo's ring
sums in its own order). The Ledger is computed the same way in every process.

Bounded waits (issue 10). Every call is issued asynchronously and waited for in
slices: after `timeout` seconds (`comm_timeout`) without an answer, or as soon
as the heartbeat (`lab.comm.heartbeat`) says a peer has been silent for
`heartbeat_timeout` seconds (when > 0), it raises `CollectiveError` naming this
rank, the collective, its tag and step, and the rank(s) whose heartbeat went
silent. The process group itself gets the same timeout (`init_process_group`),
so gloo gives up on its side too. Without a timeout the wait is gloo's.
A process whose collective failed cannot leave its process group (gloo waits
for the operation still pending), so at interpreter exit it ends with
`os._exit(1)` after the exit handlers registered later than this module.

Sub-groups (`groups=`) become `torch.distributed` groups made with
`dist.new_group`, cached by their layout. Every process creates every group of a
layout, in list order, the first time the layout is used; since every process
issues the same collectives in the same order, the groups are created in the
same order everywhere, as `new_group` requires.
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from lab.comm import heartbeat
from lab.comm.collective import Collective, mixing_pairs, ordered_sum, reduction_dtype
from lab.comm.ledger import Ledger
from lab.comm.packet import Packet

_broken = False  # a collective of this process failed: its process group cannot be torn down


@atexit.register
def _exit_if_broken() -> None:
    if _broken:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(1)


class CollectiveError(RuntimeError):
    """A collective that got no answer in time or failed, with who was waiting for what and who went silent."""

    def __init__(self, message: str, *, rank: int, op: str, tag: str, silent: list[int]):
        super().__init__(message)
        self.rank, self.op, self.tag, self.silent = rank, op, tag, list(silent)


def init_process_group(*, rank: int, world_size: int, init_method: str | None = None, backend: str | None = None,
                       timeout: float | None = None, heartbeat_timeout: float = 0.0) -> None:
    """`dist.init_process_group` with a timeout in seconds (None: torch's default) and this rank's heartbeat."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kw = {} if timeout is None else {"timeout": timedelta(seconds=float(timeout))}
    dist.init_process_group(backend, rank=rank, world_size=world_size, init_method=init_method, **kw)
    start_heartbeat(timeout=timeout, heartbeat_timeout=heartbeat_timeout)


def start_heartbeat(*, timeout: float | None, heartbeat_timeout: float = 0.0):
    """This process's heartbeat for the default process group (lab.comm.heartbeat), or None without a store."""
    try:
        return heartbeat.start(rank=dist.get_rank(), world_size=dist.get_world_size(),
                               period=heartbeat.period_for(timeout, heartbeat_timeout))
    except Exception:  # noqa: BLE001 - no store to beat on: collectives still time out, without names
        return None


def init_from_env(backend: str | None = None, *, timeout: float | None = None,
                  heartbeat_timeout: float = 0.0) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world_size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError("backend='distributed' needs torchrun (RANK/WORLD_SIZE unset); e.g. "
                             "torchrun --nproc-per-node 4 -m lab.cli run --backend distributed ...")
        init_process_group(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                           init_method="env://", backend=backend, timeout=timeout,
                           heartbeat_timeout=heartbeat_timeout)
    elif heartbeat.current() is None:
        start_heartbeat(timeout=timeout, heartbeat_timeout=heartbeat_timeout)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Stop the heartbeat and leave the process group (the end of a worker)."""
    heartbeat.stop()
    if dist.is_initialized():
        dist.destroy_process_group()


class DistributedCollective(Collective):
    def __init__(self, *, ledger: Ledger, group=None, timeout: float | None = None, heartbeat_timeout: float = 0.0):
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        super().__init__(world_size=world, ranks=[rank], ledger=ledger)
        self.rank = rank
        self.timeout, self.heartbeat_timeout = timeout, float(heartbeat_timeout)
        self._subgroups: dict[tuple, object] = {}

    # ---- bounded waits ---------------------------------------------------------------------------------
    def _wait(self, op: str, tag: str, issue):
        """Run `issue()` (torch.distributed calls with async_op=True, returning a Work or a list of them) and wait
        until they complete, within `timeout` (see the module docstring)."""
        start = time.monotonic()
        try:
            works = issue()
        except RuntimeError as e:
            raise self._failure(op, tag, start, e) from e
        hb = heartbeat.current()
        slice_s = 1.0 if hb is None else min(1.0, max(hb.period, 0.05))
        for w in works if isinstance(works, list) else [works]:
            if self.timeout is None and not self.heartbeat_timeout:
                try:
                    w.wait()
                except RuntimeError as e:
                    raise self._failure(op, tag, start, e) from e
                continue
            while True:
                left = float("inf") if self.timeout is None else self.timeout - (time.monotonic() - start)
                try:
                    w.wait(timeout=timedelta(seconds=max(0.001, min(slice_s, left))))
                    break
                except RuntimeError as e:
                    if w.is_completed():  # it ended with an error (a peer gone, gloo's own timeout)
                        raise self._failure(op, tag, start, e) from e
                silent = hb.silent(self.heartbeat_timeout) if hb is not None and self.heartbeat_timeout else []
                if silent or (self.timeout is not None and time.monotonic() - start >= self.timeout):
                    raise self._failure(op, tag, start, None) from None

    def _failure(self, op: str, tag: str, start: float, error: Exception | None) -> CollectiveError:
        global _broken
        _broken = True
        waited = time.monotonic() - start
        what = f"rank {self.rank}: {op}" + (f" (tag {tag!r})" if tag else "") + f" at step {self.ledger.step}"
        if error is None:
            how = (f"got no answer within comm_timeout={self.timeout:g} s" if self.timeout is not None
                   and waited >= self.timeout else f"gave up after {waited:.1f} s "
                   f"(heartbeat_timeout={self.heartbeat_timeout:g} s)")
        else:
            how = f"failed after {waited:.1f} s ({type(error).__name__}: {str(error).splitlines()[0][:300]})"
        hb, silent = heartbeat.current(), []
        if hb is None:
            who = "no heartbeat runs in this process to name the silent rank"
        elif hb.store_silence() >= 3 * hb.period:
            who = (f"the rendezvous store has not answered for {hb.store_silence():.1f} s (under lab.launch rank 0 "
                   "holds it: rank 0 may be the one that stopped)")
        else:
            threshold = max(3 * hb.period, min(self.heartbeat_timeout or waited, waited) * 0.5)
            silent = hb.silent(threshold)
            ages = hb.silence()
            if silent:
                names = ", ".join(f"rank {r} (silent {ages[r]:.1f} s)" for r in silent)
                who = f"{names} stopped answering: no heartbeat"
            else:
                who = f"every peer's heartbeat is alive (none silent for {threshold:.1f} s)"
        return CollectiveError(f"{what} {how}; {who}", rank=self.rank, op=op, tag=tag, silent=silent)

    # ---- groups and rows --------------------------------------------------------------------------------
    def _pg(self, groups):
        """The process group of this rank's group in `groups` (validated), creating the layout's groups once."""
        if groups is None:
            return self.group
        key = tuple(tuple(g) for g in groups)
        if key not in self._subgroups:
            mine = None
            for g in groups:  # every process creates every group, in the same order
                members = g if self.group is None else [dist.get_global_rank(self.group, r) for r in g]
                pg = dist.new_group(members, timeout=None if self.timeout is None else timedelta(seconds=self.timeout))
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

    def _gather_rows(self, row, *, op="all_gather", tag=""):
        out = row.new_empty(self.world_size, *row.shape)
        self._wait(op, tag, lambda: dist.all_gather(list(out.unbind(0)), row, group=self.group, async_op=True))
        return out

    # ---- the operations -----------------------------------------------------------------------------------
    def all_reduce(self, x, *, op="mean", tag="", record=True, groups=None):
        acc = reduction_dtype(x, op)
        groups = self._groups(groups)
        self._record("all_reduce", x, tag=tag, record=record, groups=groups)
        row = self._row(x).to(acc).clone()  # fp32 at least, fp64 as given, integers in int64
        pg = self._pg(groups)
        self._wait("all_reduce", tag, lambda: dist.all_reduce(row, group=pg, async_op=True))
        if op == "mean":
            row.div_(self._size(groups))
        return row.to(x.dtype).unsqueeze(0)

    def reduce_scatter(self, x, *, op="mean", tag="", groups=None):
        acc = reduction_dtype(x, op)
        groups = self._groups(groups)
        p = self._size(groups)
        if x.shape[1] % p:
            raise ValueError(f"reduce_scatter needs dim 1 ({x.shape[1]}) divisible by the group size {p}")
        self._record("reduce_scatter", x, tag=tag, record=True, groups=groups)
        chunks = [c.contiguous() for c in self._row(x).to(acc).chunk(p, dim=0)]
        out = torch.empty_like(chunks[0])
        pg = self._pg(groups)
        self._wait("reduce_scatter", tag, lambda: dist.reduce_scatter(out, chunks, group=pg, async_op=True))
        if op == "mean":
            out.div_(p)
        return out.to(x.dtype).unsqueeze(0)

    def all_gather(self, x, *, tag="", record=True, groups=None):
        groups = self._groups(groups)
        self._record("all_gather", x, tag=tag, record=record, groups=groups)
        if isinstance(x, Packet):
            return x.map(lambda t: self._gather_into(self._row(t), groups, tag).unsqueeze(0))
        return self._gather_into(self._row(x), groups, tag).unsqueeze(0)

    def _gather_into(self, row, groups, tag=""):
        """(…) -> (G, …): all_gather into views of one output buffer (gloo's all_gather_into_tensor would
        stage the output in a second buffer of the same size)."""
        out = row.new_empty(self._size(groups), *row.shape)
        pg = self._pg(groups)
        self._wait("all_gather", tag, lambda: dist.all_gather(list(out.unbind(0)), row.contiguous(), group=pg,
                                                              async_op=True))
        return out

    def broadcast(self, x, *, src=0, tag=""):
        self._check_src(src)
        self._record("broadcast", x, tag=tag, record=True)
        row = self._row(x).clone()
        root = src if self.group is None else dist.get_global_rank(self.group, src)
        self._wait("broadcast", tag, lambda: dist.broadcast(row, src=root, group=self.group, async_op=True))
        return row.unsqueeze(0)

    def all_to_all(self, x, *, tag="", groups=None, record=True):
        groups = self._groups(groups)
        self._record("all_to_all", x, tag=tag, record=record, groups=groups)
        if isinstance(x, Packet):
            return x.map(lambda t: self._all_to_all(t, groups, tag))
        return self._all_to_all(x, groups, tag)

    def _all_to_all(self, x, groups, tag=""):
        p = self._size(groups)
        if x.shape[1] != p:
            raise ValueError(f"all_to_all needs dim 1 ({x.shape[1]}) equal to the group size {p}")
        row = self._row(x)
        out = torch.empty_like(row)
        pg = self._pg(groups)
        self._wait("all_to_all", tag, lambda: dist.all_to_all_single(out, row, group=pg, async_op=True))
        return out.unsqueeze(0)

    def _p2p(self, op: str, tag: str, sends, recvs):
        """Point-to-point: `sends` [(tensor, dst)], `recvs` [(tensor, src)] in ranks of `self.group`, at once."""
        glob = (lambda r: r) if self.group is None else (lambda r: dist.get_global_rank(self.group, r))
        ops = [dist.P2POp(dist.isend, t, glob(d), group=self.group) for t, d in sends]
        ops += [dist.P2POp(dist.irecv, t, glob(s), group=self.group) for t, s in recvs]
        if ops:
            self._wait(op, tag, lambda: list(dist.batch_isend_irecv(ops)))

    def shift(self, x, *, offset=1, tag=""):
        p = self.world_size
        offset = self._check_offset(offset)
        self.record_peers([(r, (r + offset) % p) for r in range(p)], x[0].numel() * x.element_size(),
                          op="shift", tag=tag)
        row = self._row(x)
        if offset % p == 0:  # every rank sends to itself
            return row.clone().unsqueeze(0)
        out = torch.empty_like(row)
        self._p2p("shift", tag, [(row, (self.rank + offset) % p)], [(out, (self.rank - offset) % p)])
        return out.unsqueeze(0)

    def send_recv(self, x, *, pairs, tag=""):
        pairs = self._check_pairs(pairs)
        self.record_peers(pairs, x[0].numel() * x.element_size(), op="send_recv", tag=tag)
        row = self._row(x)
        out = torch.zeros_like(row)
        if any(s == d == self.rank for s, d in pairs):
            out.copy_(row)
        self._p2p("send_recv", tag, [(row, d) for s, d in pairs if s == self.rank and d != s],
                  [(out, s) for s, d in pairs if d == self.rank and d != s])
        return out.unsqueeze(0)

    def server_reduce(self, x, *, weights, ranks, tag=""):
        """The server lives on rank 0: gather there, reduce in ascending order, mirror to every process."""
        ranks = sorted(ranks)
        self._record("server_gather", x, tag=tag, record=True, ranks=ranks)
        row = self._row(x)
        gathered = [torch.empty_like(row) for _ in range(self.world_size)] if self.rank == 0 else None
        root = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._wait("server_gather", tag, lambda: dist.gather(row, gathered, dst=root, group=self.group, async_op=True))
        agg = ordered_sum(torch.stack(gathered)[ranks], weights[ranks]) if self.rank == 0 else \
            torch.empty(row.shape, dtype=torch.promote_types(row.dtype, torch.float32), device=row.device)  # its dtype
        self._wait("server_gather", tag, lambda: dist.broadcast(agg, src=root, group=self.group, async_op=True))
        return agg

    def mix(self, x, *, weights, tag=""):
        self.record_peers(mixing_pairs(weights), x[0].numel() * x.element_size(), op="mix", tag=tag)
        rows = self._gather_rows(self._row(x), op="mix", tag=tag)  # a reference implementation: all_gather
        return ordered_sum(rows, weights[self.rank]).unsqueeze(0)
