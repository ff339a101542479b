"""Fidelity: each technique's headline claim, what commlab measures at lab scale, and whether it holds.

One `Claim` per registered technique (`lab.registry.techniques()`), declared in the family modules here
(`data_parallel`, `federated`, `zeroth_order`, `lora`, `moe`, `sequence`) with the paper, its headline
claim (labelled with where the lab read it: [ABSTRACT], [CODE README], [V-abs], [SIM], [spec], or [RECON]
when it is remembered rather than read), how faithful the implementation is, and what the check leaves
out. `measure(budget)` runs each claim's minimal experiments once (`Bench`; small configs scaled by
`budget`) and returns the table `notebooks/10_papers.ipynb` shows: one row per technique with the measured
text and `holds` — True or False for the claim's *direction* at lab scale, None where it cannot be
checked here. Magnitudes (500×, 10⁶×, 3.54×) are the papers' at their scale and are never asserted.

A technique with no declared claim gets a row that says so (and tests/test_fidelity.py fails), so a new
technique cannot go unlisted.
"""
from __future__ import annotations

import time

import pandas as pd

from lab import registry
from lab.fidelity import data_parallel, federated, lora, moe, sequence, zeroth_order  # noqa: F401 (register)
from lab.fidelity.claim import CLAIMS, Bench, Claim, claim

__all__ = ["CLAIMS", "COLUMNS", "Bench", "Claim", "claim", "claims", "measure", "missing"]

COLUMNS = ("technique", "label", "family", "paper", "claim", "measured", "holds", "evidence", "left", "seconds")


def claims() -> dict[str, Claim]:
    """The declared claims of the registered techniques, in registry order."""
    return {name: CLAIMS[name] for name in registry.techniques() if name in CLAIMS}


def missing() -> list[str]:
    """Registered techniques without a declared claim."""
    return [name for name in registry.techniques() if name not in CLAIMS]


def family(cls) -> str:
    """The family package of a technique class: 'sync' for lab.sync.ddp.DDP."""
    parts = cls.__module__.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "lab" else cls.__module__


def measure(budget: float = 1.0, *, techniques: list[str] | None = None) -> pd.DataFrame:
    """Run every claim's check (or those of `techniques`) and return the table, one row per technique.

    Columns: technique, label, family, paper, claim, measured, holds (True/False/None), evidence, left,
    seconds (the wall time of that row's own runs; a shared baseline counts where it first runs). The
    number of experiments trained is `table.attrs['runs']`.
    """
    reg = registry.techniques()
    names = list(reg) if techniques is None else list(techniques)
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ValueError(f"techniques={unknown!r} is invalid: expected names from {list(reg)}")
    bench = Bench(budget)
    rows = []
    with bench.scratch():
        for name in names:
            cls, c = reg[name], CLAIMS.get(name)
            row = {"technique": name, "label": cls.label or name, "family": family(cls)}
            if c is None:
                rows.append({**row, "paper": "", "claim": "", "measured": "no claim declared: add one in lab/fidelity",
                             "holds": None, "evidence": "", "left": "", "seconds": 0.0})
                continue
            t0 = time.perf_counter()
            measured, holds = c.measure(bench)
            holds = None if holds is None else bool(holds)  # numpy comparisons give numpy bools
            rows.append({**row, "paper": c.paper, "claim": c.claim, "measured": measured, "holds": holds,
                         "evidence": c.evidence, "left": c.left, "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["runs"] = bench.num_runs  # experiments trained (each once, shared between rows)
    return table
