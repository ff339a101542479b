"""One place that chooses torch's CPU threads for everything the lab runs.

The lab's models are small (thousands to a few million parameters, batches
of tens): one more intra-op thread buys nothing, and on a shared machine
OpenMP threads spin against each other. Measured on 2 cores (ENVIRONMENT.md,
and `bench/threads.py` in the same run): 300 DDP steps of the digits MLP took
23–29 s with torch's default threads and 0.9 s with one; papermill of the
sync-period notebook 250 s against 38 s. So the lab uses one intra-op thread
unless told otherwise: `COMMLAB_THREADS=N` (N >= 1) in the environment, or
`configure(N)` from Python; for one run, the config's `threads` knob (`using`
sets it while the run trains and puts the previous count back after).

`import lab` calls `configure()`, so the Jupyter kernel, papermill, the CLI,
the run panel's background thread (torch's intra-op setting is per process)
and spawned gloo ranks all get the same choice without any notebook setting it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

ENV = "COMMLAB_THREADS"
DEFAULT = 1


def chosen() -> int:
    """The thread count the lab uses: $COMMLAB_THREADS if set, else DEFAULT."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{ENV}={text!r} is invalid: expected an integer >= 1") from None
    if n < 1:
        raise ValueError(f"{ENV}={text!r} is invalid: expected an integer >= 1")
    return n


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads (and inter-op, where torch still allows it); returns the count set."""
    n = chosen() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads={threads!r} is invalid: expected an integer >= 1")
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first inter-op work; intra-op is what matters here
        pass
    os.environ.setdefault("OMP_NUM_THREADS", str(n))  # for processes the lab spawns
    return n


@contextmanager
def using(threads: int):
    """torch's intra-op threads = `threads` inside the block (0: leave the lab's choice), restored after."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
