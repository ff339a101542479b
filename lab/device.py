"""Where a run's tensors live: the `device` knob.

`device='cpu'` (the default: the lab's numbers are the CPU's, bit for bit), `'cuda'` (the first GPU; refused
when `torch.cuda.is_available()` is False), or `'auto'` (the GPU when there is one, else the CPU).

The cluster's parameters and gradients, the data, and what the collectives and compressors compute from them
live on that device; everything is created with `device=` from its inputs, so no hot path copies to the CPU.
What stays on the CPU by design: the random generators of the data streams and of client sampling (so a run
draws the same batches and clients on any device), the Ledger's byte counts, and the fault model's draws.
Simulated reductions add the ranks in ascending order on every device; results on a GPU match the CPU's
within floating-point tolerance, not bit for bit (different kernels).
"""
from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


def check(device: str, bad) -> None:
    """Refuse 'cuda' on a machine without one, through `bad(field, value, allowed)` (lab.knobs.bad)."""
    if device == "cuda" and not torch.cuda.is_available():
        bad("device", device, "'cpu' or 'auto': torch.cuda.is_available() is False on this machine")


def resolve(device: str) -> torch.device:
    """The torch.device of a `device` setting ('auto': cuda when available, else cpu)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def data_on(data, device: torch.device):
    """The Dataset `data` (lab.data) with its tensors on `device` (itself when they are there already)."""
    if data.x_train.device == device:
        return data
    import dataclasses

    moved = {f: getattr(data, f).to(device) for f in ("x_train", "y_train", "x_test", "y_test")}
    return dataclasses.replace(data, **moved)
