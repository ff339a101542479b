"""Run the sequence-parallel methods on real gloo processes (one rank each) and bring the results back.

`run_on_gloo(cases, world_size=4, ...)` spawns `world_size` processes on 127.0.0.1 with
`torch.multiprocessing.spawn`, and in each runs every case — a method's forward and backward on the same
seeded random q, k, v the caller can rebuild (`case_inputs`) — through a `DistributedCollective`. It
returns, per case, the rank-stacked output and input gradients assembled from every rank, every rank's
Ledger table, and each rank's wall-clock seconds per repetition (forward + backward). The worker lives
in this module because spawn cannot pickle a function defined in a notebook or a test.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Case:
    method: str  # a METHODS name, or 'lasp'
    causal: bool = False
    layout: str = "contiguous"


def case_inputs(case: Case, *, world_size: int, batch: int, heads: int, seq: int, head_dim: int, seed: int):
    """Full q, k, v (B, H, N, Dh) and the output gradient of a case, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    scale = head_dim ** -0.5 if case.method == "lasp" else 1.0
    q, k, v, d_out = (torch.randn(batch, heads, seq, head_dim, generator=g) for _ in range(4))
    return q * scale, k * scale, v, d_out


def run_case(case: Case, collective, *, world_size: int, shape: dict, seed: int):
    """Forward and backward of one case on this process's rows: (out, dq, dk, dv) rank-stacked."""
    from lab.sequence.attention import sp_attention
    from lab.sequence.lasp import lasp_attention
    from lab.sequence.layout import shard

    q, k, v, d_out = case_inputs(case, world_size=world_size, seed=seed, **shape)
    rows = collective.ranks
    qs, ks, vs = (shard(t, world_size, case.layout)[rows].clone().requires_grad_() for t in (q, k, v))
    if case.method == "lasp":
        out = lasp_attention(qs, ks, vs, collective=collective)
    else:
        out = sp_attention(qs, ks, vs, method=case.method, collective=collective, causal=case.causal,
                           layout=case.layout)
    out.backward(shard(d_out, world_size, case.layout)[rows])
    return out.detach(), qs.grad, ks.grad, vs.grad


def _worker(rank, world_size, port, out_dir, cases, shape, seed, repeats, topology_name):
    from lab.comm import Ledger
    from lab.comm.distributed import DistributedCollective
    from lab.topology import preset

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    try:
        results = []
        for case in cases:
            ledger = Ledger(preset(topology_name, world_size))
            coll = DistributedCollective(ledger=ledger)
            seconds = []
            for i in range(repeats):
                dist.barrier()
                t0 = time.perf_counter()
                tensors = run_case(case, coll, world_size=world_size, shape=shape, seed=seed)
                seconds.append(time.perf_counter() - t0)
                if i == 0:
                    table = ledger.table()
            results.append({"tensors": tensors, "ledger": table, "seconds": seconds})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_gloo(cases: list[Case], *, world_size: int = 4, shape: dict, seed: int = 0, repeats: int = 1,
                topology: str = "ethernet") -> list[dict]:
    """Every case on `world_size` gloo processes. Per case: 'out', 'dq', 'dk', 'dv' (P, B, H, C, Dh) from
    all ranks, 'ledgers' (one table per rank) and 'seconds' (P, repeats) of forward + backward."""
    from lab.launch import free_port

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, free_port(), out, list(cases), dict(shape), seed, repeats, topology),
                 nprocs=world_size, join=True)
        per_rank = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    merged = []
    for i, _ in enumerate(cases):
        parts = [per_rank[r][i] for r in range(world_size)]
        tensors = [torch.cat([p["tensors"][j] for p in parts]) for j in range(4)]
        merged.append({"out": tensors[0], "dq": tensors[1], "dk": tensors[2], "dv": tensors[3],
                       "ledgers": [p["ledger"] for p in parts],
                       "seconds": torch.tensor([p["seconds"] for p in parts])})
    return merged
