"""Memory a run will need, estimated before anything large is allocated, against what the machine has.

Integers that size allocations (workers, and through them every rank-stacked
tensor; per-technique pools such as FedKSeed's seeds) are bounded by their
Knobs, and a run is refused up front when its estimate exceeds the memory
available, with a ValueError naming the field, its value, the estimate and the
machine's available memory — instead of an allocator error, an OOM kill or a
swap storm half-way through.

The estimate counts the rank-stacked model state (parameters, gradients, the
optimizer's buffers, error-feedback memory and a technique's copies: a factor
of STATE_COPIES d-vectors per worker), one batch of activations per worker,
and the Ledger's fixed tables. It is deliberately an over-estimate.
"""
from __future__ import annotations

import os

from lab.comm.ledger import Ledger

#: d-sized fp32 vectors a worker holds at most (params, grad, 2 Adam moments, EF memory, anchor, vmap scratch)
STATE_COPIES = 8


def available_bytes() -> int:
    """Memory this process may still use: MemAvailable from /proc/meminfo (or total RAM), capped by cgroups."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            avail = min(avail, int(limit))
    except (OSError, ValueError):
        pass
    return avail


def estimate_bytes(config, *, dim: int, example_numel: int, num_local: int | None = None) -> dict[str, int]:
    """{'model_state', 'activations', 'ledger', 'total'} bytes for `config` with a d=`dim` model."""
    n = config.num_workers if num_local is None else num_local
    state = 4 * STATE_COPIES * dim * n
    acts = 4 * 4 * example_numel * config.batch_size * n  # inputs and a few activations of the same size
    ledger = Ledger.estimate_bytes(config.num_workers)
    return {"model_state": state, "activations": acts, "ledger": ledger, "total": state + acts + ledger}


def check_memory(config, *, dim: int, example_numel: int, num_local: int | None = None) -> dict[str, int]:
    """Raise ValueError naming num_workers when the estimate exceeds the available memory."""
    est = estimate_bytes(config, dim=dim, example_numel=example_numel, num_local=num_local)
    avail = available_bytes()
    if est["total"] > avail:
        parts = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in est.items() if k != "total")
        raise ValueError(f"num_workers={config.num_workers!r} is invalid here: the run needs about "
                         f"{est['total'] / 1e9:.2f} GB ({parts}; d={dim} parameters) and this machine has "
                         f"{avail / 1e9:.2f} GB available; use fewer workers or a smaller model")
    return est
