"""A paper's claim as a declared check, and the bench that runs the small experiments behind it.

A `Claim` names a registered technique, the paper, the paper's headline claim
(with the evidence label of where the lab read it), how faithful commlab's
implementation is (the labels of its docstring and spec: [CODE], [ABSTRACT],
[RECON], [UNVERIFIED]) and what the check leaves out. Its `measure(bench)` runs
the minimal experiments at lab scale and returns `(measured text, holds)`:
`holds` is True or False when the claim's *direction* can be checked at this
scale, None when it cannot (the text then says why).

`Bench` runs each experiment once per `lab.fidelity.measure` call: claims that
share a baseline (DDP for Local SGD, DiLoCo, ZeRO, ...) get the same Run back.
Nothing outlives the call: runs are not saved, and pre-trained backbones go to
a temporary runs directory that is deleted afterwards. `budget` scales every
step and round count (with a floor per experiment, so a small budget still
trains).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lab.config import config_for
from lab.data import load_dataset
from lab.experiment import run
from lab.knobs import bad
from lab.models import build_model


@dataclass(frozen=True)
class Claim:
    technique: str  # the registry name (lab.registry)
    paper: str  # authors, year, short title
    claim: str  # the paper's headline claim, with the evidence label of its source
    evidence: str  # how faithful commlab's implementation is (labels of its docstring and spec)
    left: str  # what this check does not cover
    measure: Callable  # measure(bench) -> (measured text, holds: bool | None)
    checkable: bool = True  # whether measure() decides the direction at lab scale (holds not None)


#: every declared claim, by technique name (filled by the family modules of lab.fidelity)
CLAIMS: dict[str, Claim] = {}


def claim(technique: str, *, paper: str, claim: str, evidence: str, left: str, checkable: bool = True):
    """Decorator: register `measure(bench) -> (text, holds)` as the check of `technique`'s claim."""

    def register(measure: Callable) -> Callable:
        assert technique not in CLAIMS, f"claim of {technique!r} declared twice"
        CLAIMS[technique] = Claim(technique, paper, claim, evidence, left, measure, checkable)
        return measure

    return register


class Bench:
    """Runs experiments for the claims, each (technique, settings) once; `budget` scales their length."""

    def __init__(self, budget: float = 1.0):
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
                or not 0.05 <= budget <= 20:
            bad("budget", budget, "a finite number from 0.05 to 20 (1 = the notebook's default lengths)")
        self.budget = float(budget)
        self._runs: dict = {}

    def n(self, base: int, minimum: int = 1) -> int:
        """`base` steps (rounds) scaled by the budget, at least `minimum`."""
        return max(minimum, round(base * self.budget))

    def run(self, technique: str, **settings):
        """The Run of `config_for(technique, **settings)`, trained once per bench (not saved)."""
        key = (technique, tuple(sorted(settings.items())))
        if key not in self._runs:
            self._runs[key] = run(config_for(technique, **settings), save=False, progress=False)
        return self._runs[key]

    @property
    def num_runs(self) -> int:
        return len(self._runs)

    @contextmanager
    def scratch(self):
        """A temporary runs directory for pre-trained backbones (lab.pretrain), removed afterwards."""
        before = os.environ.get("COMMLAB_RUNS_DIR")
        path = tempfile.mkdtemp(prefix="commlab-fidelity-")
        os.environ["COMMLAB_RUNS_DIR"] = path
        try:
            yield path
        finally:
            if before is None:
                os.environ.pop("COMMLAB_RUNS_DIR", None)
            else:
                os.environ["COMMLAB_RUNS_DIR"] = before
            shutil.rmtree(path, ignore_errors=True)


# ---- what the checks read off a Run ---------------------------------------------------------------------
def last(r, column: str) -> float:
    """The last recorded value of a metrics column (evaluations are not in every row)."""
    values = r.metrics[column].dropna()
    return float(values.iloc[-1]) if len(values) else float("nan")


def accuracy(r) -> float:
    return last(r, "eval_accuracy")


def eval_loss(r) -> float:
    return last(r, "eval_loss")


def total(r, column: str = "bytes") -> float:
    """A cumulative counter (bytes, bytes_uplink, ...) at the end of the run."""
    return float(r.metrics[column].iloc[-1])


def max_gap(a, b) -> float:
    """max |a − b| between two runs' evaluated models."""
    return float((a.model.double() - b.model.double()).abs().max())


def objective(config, row: torch.Tensor | None = None, *, split: str = "train") -> float:
    """The loss of the model `row` (None: the initial model of `config`) over a whole split of its data."""
    if split not in ("train", "test"):
        bad("split", split, "'train' or 'test'")
    data = load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers)
    spec = build_model(config.model, data, seed=config.seed)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    with torch.no_grad():
        if row is not None:
            torch.nn.utils.vector_to_parameters(row.to(torch.float32), spec.module.parameters())
        return float(spec.loss_fn(spec.module(x), y))


def least_squares_optimum(config) -> float:
    """lstsq: the smallest training loss any linear model reaches (the global optimum F*)."""
    if config.dataset != "lstsq":
        bad("dataset", config.dataset, "'lstsq' (a linear least-squares problem)")
    data = load_dataset(config.dataset, seed=config.seed, num_workers=config.num_workers)
    x = torch.cat([data.x_train, torch.ones(len(data.x_train), 1)], 1).double()  # (n, d + 1)
    w = torch.linalg.lstsq(x, data.y_train.double().unsqueeze(1)).solution  # (d + 1, 1)
    return float(((x @ w).squeeze(1) - data.y_train.double()).pow(2).mean())


def excess(r) -> float:
    """F(x) − F*: how far the run's global model is from the optimum of the whole training set (lstsq)."""
    return objective(r.config, r.model) - least_squares_optimum(r.config)


# ---- formatting: every number in the table is text with its unit -----------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pts(a: float, b: float) -> str:
    """The difference of two accuracies in percentage points, signed."""
    return f"{100 * (a - b):+.1f} pts"


def num(x: float) -> str:
    """3 significant digits, no exponent for ordinary sizes."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.2e}"


def sci(x: float) -> str:
    """A small difference in one significant digit: '8e-06', or '0' when it is exactly zero."""
    return "0" if x == 0 else f"{x:.0e}"


def times(a: float, b: float) -> str:
    """a / b as a factor: '1/16' when a is a clean fraction of b, else '0.42×'."""
    if b == 0:
        return "n/a"
    q = a / b
    if 0 < q < 1 and abs(1 / q - round(1 / q)) < 1e-6:
        return f"1/{round(1 / q)}"
    return f"{q:.2f}×" if q < 100 else f"{q:,.0f}×"


def size(nbytes: float) -> str:
    """Bytes with a binary unit: '16.0 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
