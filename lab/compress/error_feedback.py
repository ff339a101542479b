"""Error feedback: what each wrapper around a compressor guarantees, and what it does not (spec Part B §B5–B7).

A wrapper sits between a worker's vector g (n, d) and its compressor, in three steps:

    p = fb.prepare(g)                   # what the worker compresses
    local, agg = compressor.reduce(p)   # (n, d) its own decoded message; (d,) the aggregate
    fb.commit(p, local, agg)            # worker state update
    update = fb.output(agg)             # what the receiver applies (server-side mirror)

C is δ-contractive when E||C(v) − v||² ≤ (1 − δ)||v||² (top-k: δ = k/d; unscaled
random-k: δ = k/d; `Compressor.contraction(d)`). With full gradients, smooth f and
every worker taking part:

- `none`: p = g, update = agg; what compression drops is lost. Unbiased
  compressors converge (slower, by their variance ω); biased ones can stall or
  diverge across heterogeneous workers (the spec's §B1 example diverges).
- `ef` (EF14; Seide et al. 2014, Stich et al. 2018): residual e (init 0),
  p = e + g, e = p − C(p), update = agg. Converges for one worker, and for many
  when their gradients agree at the optimum (homogeneous data) or under a
  bounded-gradient assumption with a step size that goes to 0. With a constant
  step and workers whose optima differ (∇f_i(x*) ≠ 0) the compressed average
  keeps missing part of the gradients: EF14 **stalls** at a distance that grows
  with the heterogeneity and the step size; it does not reach x* (measured on
  the spec's N = 10, d = 20 quadratics with top-1: ||x − x*|| ≈ 1.3 after 3000
  steps at step 0.02 and ≈ 2.7 at 0.05, while EF21 reaches 1e-15).
  Adds no traffic; a d-vector per worker.
- `ef21` (Richtárik, Sokolov, Fatkhullin 2021): each worker keeps an estimate
  h_i (init 0; the first message is C(g)), sends c_i = C(g − h_i), h_i += c_i;
  the receiver keeps h = mean_i h_i by h += agg and applies h. With any
  δ-contractive C, L-smooth f_i and full gradients it converges at GD's O(1/T)
  rate (linearly under PL / strong convexity) for a step size
  γ ≤ 1/(L + L̃·√(β/θ)), θ = 1 − √(1 − δ), β = (1 − δ)/(1 − √(1 − δ)) — with
  no bounded-gradient or bounded-heterogeneity assumption. With stochastic
  gradients it converges only to a noise floor that does not shrink with more
  workers (EF21-SGDM adds momentum for that).
- `econtrol` (Gao, Islamov, Stich, ICLR 2024): error e_i and estimate h_i
  (init 0); Δ_i = C(η e_i + g − h_i), e_i += g − h_i − Δ_i, h_i += Δ_i; the
  receiver applies the updated h = h + agg (the spec's pitfall: not the old h).
  η = 0 is EF21. The paper proves convergence with any δ-contractive C, with
  stochastic gradients and arbitrary heterogeneity (no bounded-gradient or
  heterogeneity assumption), with linear speed-up in the number of workers, for
  a small η of the order of δ and a matching step size [ABSTRACT + review
  summary; the exact constants are not verified]. η too large diverges:
  default η = δ of the compressor at the vector's d (k/d for top-k; 1/(1 + ω)
  for an unbiased one; 0.1, with a warning, when neither is known), and a
  warning when η > δ. Measured on the spec's N = 10, d = 20 quadratics with
  top-1 (δ = 0.05) at step 0.05: η = δ reaches 1e-14, η = 0.1 diverges.
  [RECON] the update rule is the spec's reconstruction (from a third-party
  implementation, not the authors' code).

Residuals hold *gradient units* (the learning rate is applied after
aggregation): with a constant learning rate this is the spec's Stich form
divided by γ; when the learning rate changes, the two differ (§B5 pitfall).
The init h_i = 0 costs no dense first message (the spec's alternative sends
g_i⁰ uncompressed once). In federated use with partial participation the
receiver's h is the running sum of aggregates, equal to Σ_i w_i h_i only under
full participation with fixed weights — none of the guarantees above then hold
as stated.

`commit(..., active=mask)` updates only the rows in `mask` (federated clients
that were sampled); other rows keep their state.
"""
from __future__ import annotations

import warnings

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
            self.h = g.new_zeros(g.shape[1])

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
    """EF21's estimate plus an EF14-style error e_i fed back with weight η (None: δ of the compressor)."""

    name = "econtrol"

    def __init__(self, compressor: Compressor, *, eta: float | None = None):
        super().__init__(compressor)
        if eta is not None and not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
            raise ValueError(f"econtrol_eta={eta!r} is invalid: expected a number in [0, 1]")
        self.eta = eta  # resolved against the compressor's δ at the first vector (its d)
        self.error: torch.Tensor | None = None
        self._innovation: torch.Tensor | None = None

    def resolve_eta(self, d: int) -> float:
        """η for d-vectors: the given one (warning when it exceeds δ), or δ by default."""
        delta = default_eta(self.compressor, d)
        if self.eta is None:
            if delta is None:
                warnings.warn(f"error_feedback='econtrol': the contraction δ of compressor="
                              f"{self.compressor.name!r} is unknown; using econtrol_eta=0.1 unchecked",
                              RuntimeWarning, stacklevel=3)
                return 0.1
            return delta
        if delta is not None and self.eta > delta + 1e-12:
            warnings.warn(f"econtrol_eta={self.eta:g} exceeds the contraction δ={delta:.3g} of compressor="
                          f"{self.compressor.name!r} at d={d}: EControl can diverge; use econtrol_eta <= δ "
                          "(0 picks δ)", RuntimeWarning, stacklevel=3)
        return self.eta

    def prepare(self, g):
        self._init(g)
        if self.error is None:
            self.error = torch.zeros_like(self.h_local)
            self.eta = self.resolve_eta(g.shape[1])
        self._innovation = g - self.h_local  # g - h_i
        return self.eta * self.error + self._innovation

    def commit(self, p, local, agg, *, active=None):
        self.error = _masked(self.error + self._innovation - local, self.error, active)
        super().commit(p, local, agg, active=active)

    def state_dict(self):
        return {**super().state_dict(), "error": self.error, "eta": self.eta}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.error = state["error"]
        self.eta = state.get("eta", self.eta)


def default_eta(compressor: Compressor, d: int) -> float | None:
    """EControl's default η for d-vectors: the compressor's contraction δ (k/d for top-k), or 1/(1 + ω) for an
    unbiased compressor of variance ω (the contraction of C/(1 + ω)); None when neither is known."""
    delta = compressor.contraction(d)
    if delta is not None:
        return float(min(max(delta, 0.0), 1.0))
    omega = compressor.variance(d) if compressor.unbiased else None
    return 1.0 / (1.0 + omega) if omega is not None else None


FEEDBACK = {"none": NoFeedback, "ef": ErrorFeedback, "ef21": EF21, "econtrol": EControl}
