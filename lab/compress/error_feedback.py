"""Error feedback: wrappers that make biased compressors converge (spec Part B §B5–B7).

A wrapper sits between a worker's vector g (n, d) and its compressor, in three steps:

    p = fb.prepare(g)                   # what the worker compresses
    local, agg = compressor.reduce(p)   # (n, d) its own decoded message; (d,) the aggregate
    fb.commit(p, local, agg)            # worker state update
    update = fb.output(agg)             # what the receiver applies (server-side mirror)

- `none`: p = g, update = agg; what compression drops is lost.
- `ef` (EF14; Seide et al. 2014, Stich et al. 2018): residual e (init 0),
  p = e + g, e = p - C(p), update = agg. Adds no traffic, a d-vector per worker.
- `ef21` (Richtárik, Sokolov, Fatkhullin 2021): each worker keeps an estimate
  h_i (init 0; the first message is C(g)), sends c_i = C(g - h_i), h_i += c_i;
  the receiver keeps h = mean_i h_i by h += agg and applies h.
- `econtrol` (Gao, Islamov, Stich, ICLR 2024): error e_i and estimate h_i
  (init 0); Δ_i = C(η e_i + g - h_i), e_i += g - h_i - Δ_i, h_i += Δ_i; the
  receiver applies the updated h = h + agg (the spec's pitfall: not the old h).
  η = 0 is EF21. [RECON] the update rule is the spec's reconstruction (from a
  third-party implementation, not the authors' code); η defaults to 0.1 (spec
  §B7: "expose η in {0, 0.01, 0.1, 0.5, 1}, default 0.1") — the paper's
  recommended η is not verified.

Residuals hold *gradient units* (the learning rate is applied after
aggregation): with a constant learning rate this is the spec's Stich form
divided by γ; when the learning rate changes, the two differ (§B5 pitfall).
The init h_i = 0 costs no dense first message (the spec's alternative sends
g_i⁰ uncompressed once). In federated use with partial participation the
receiver's h is the running sum of aggregates, equal to Σ_i w_i h_i only under
full participation with fixed weights.

`commit(..., active=mask)` updates only the rows in `mask` (federated clients
that were sampled); other rows keep their state.
"""
from __future__ import annotations

import torch

from lab.compress.base import Compressor


class NoFeedback:
    name = "none"

    def __init__(self, compressor: Compressor):
        self.compressor = compressor

    def prepare(self, g: torch.Tensor) -> torch.Tensor:
        return g

    def commit(self, p: torch.Tensor, local: torch.Tensor, agg: torch.Tensor, *, active=None) -> None:
        pass

    def output(self, agg: torch.Tensor) -> torch.Tensor:
        return agg

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _masked(new: torch.Tensor, old: torch.Tensor, active) -> torch.Tensor:
    return new if active is None else torch.where(active.unsqueeze(1), new, old)


class ErrorFeedback(NoFeedback):
    """EF14 memory, rank-stacked: residual (n, d)."""

    name = "ef"

    def __init__(self, compressor: Compressor):
        super().__init__(compressor)
        self.residual: torch.Tensor | None = None

    def prepare(self, g):
        if self.residual is None:
            self.residual = torch.zeros_like(g)
        return self.residual + g

    def commit(self, p, local, agg, *, active=None):
        sent = agg.expand_as(p) if self.compressor.error_vs_aggregate else local
        self.residual = _masked(p - sent, self.residual, active)

    def state_dict(self):
        return {"residual": self.residual}

    def load_state_dict(self, state):
        self.residual = state["residual"]


class EF21(NoFeedback):
    """Markov compressor: workers' estimates h_i (n, d), the receiver's mean estimate h (d,)."""

    name = "ef21"

    def __init__(self, compressor: Compressor):
        super().__init__(compressor)
        self.h_local: torch.Tensor | None = None
        self.h: torch.Tensor | None = None

    def _init(self, g):
        if self.h_local is None:
            self.h_local = torch.zeros_like(g)
            self.h = torch.zeros(g.shape[1], dtype=g.dtype)

    def prepare(self, g):
        self._init(g)
        return g - self.h_local

    def commit(self, p, local, agg, *, active=None):
        self.h_local = _masked(self.h_local + local, self.h_local, active)

    def output(self, agg):
        self.h = self.h + agg
        return self.h

    def state_dict(self):
        return {"h_local": self.h_local, "h": self.h}

    def load_state_dict(self, state):
        self.h_local, self.h = state["h_local"], state["h"]


class EControl(EF21):
    """EF21's estimate plus an EF14-style error e_i fed back with weight η."""

    name = "econtrol"

    def __init__(self, compressor: Compressor, *, eta: float = 0.1):
        super().__init__(compressor)
        if not 0 <= eta <= 1:
            raise ValueError(f"econtrol_eta={eta!r} is invalid: expected a number in [0, 1]")
        self.eta = eta
        self.error: torch.Tensor | None = None
        self._innovation: torch.Tensor | None = None

    def prepare(self, g):
        self._init(g)
        if self.error is None:
            self.error = torch.zeros_like(self.h_local)
        self._innovation = g - self.h_local  # g - h_i
        return self.eta * self.error + self._innovation

    def commit(self, p, local, agg, *, active=None):
        self.error = _masked(self.error + self._innovation - local, self.error, active)
        super().commit(p, local, agg, active=active)

    def state_dict(self):
        return {**super().state_dict(), "error": self.error}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.error = state["error"]


FEEDBACK = {"none": NoFeedback, "ef": ErrorFeedback, "ef21": EF21, "econtrol": EControl}
