"""SCAFFOLD, SCALLION and SCAFCOM: control variates that remove client drift, with compressed uplinks.

Papers: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (spec §A5, pseudo-code [RECON], verified [SIM]); Huang, Li,
Li, "Stochastic Controlled Averaging for Federated Learning with Communication
Compression", ICLR 2024 — SCALLION and SCAFCOM (spec §A6/§A7: the algorithm
boxes are [RECON]; where α and β enter follows the spec and is not checked
against the paper).

Idea: on non-IID data a client's local steps drift towards its own optimum.
The server keeps c (≈ the global gradient) and each client c_i (≈ its own);
every local step follows g_i(y) − c_i + c, the global gradient's direction.

**SCAFFOLD** (two uplink vectors). Round: the server sends x and c to the
sampled clients (8d bytes down each); client i runs K steps from y = x, sets
c_i⁺ = the mean of its raw gradients over the steps (= option II,
c_i − c + (x − y)/(Kη), for plain SGD; robust to momentum as the spec advises),
uploads Δy_i = y − x and Δc_i = c_i⁺ − c_i (8d bytes up); the server sets
x += η_g·mean_S Δy_i and c += (1/N)·Σ_S Δc_i (N = all clients, so c stays the
mean of every c_i under partial participation).

**SCALLION** (one compressed uplink vector, unbiased compressor C). With
u_i = mean raw gradient − c_i, the client sends δ_i = C(u_i) and sets
c_i += α·δ_i; the server sets x −= η_g·K·η·(c + mean_S δ_i) and
c += (α/N)·Σ_S δ_i. With C = identity and α = 1 this *is* SCAFFOLD. α defaults
to 1/(1 + ω) (ω: the compressor's variance); α = 1 diverges with random-k.
The server forms every sum with float64 weights in float64 (then stores x and c
in the run's dtype): c must stay the mean of the c_i, and a float32 sum leaves
an error there that no later round removes (SCALLION then stalls near 1e-7 on
float64 problems where SCAFFOLD reaches 1e-15).

**SCAFCOM** (biased compressor + momentum). A momentum buffer v_i per client:
v_i = (1 − β)·v_i + β·(u_i + c_i), δ_i = C(v_i − c_i), then as SCALLION
(α = 1 by default). β = 1 is an EF21-style tracker of the local gradient.

The compressor is `lab.compress.make_compressor(compressor, ratio=compression_ratio,
scope=compress_scope)`, sent through a `lab.compress.Channel` without error feedback
(the uplink: a star push; metrics `payload_ratio`, `traffic_ratio`); its packets
are counted as sent (values, indices or seeds). Every client runs
the same K local steps (`local_steps`, or `local_epochs`·⌈mean n_i / B⌉): the
single-vector form rebuilds Δy_i from δ_i with one K. Knobs: `client_fraction`,
`local_steps`, `lr` (η), `momentum`, `server_lr` (η_g), `compressor`,
`compression_ratio`, `cv_alpha` (α), `scafcom_beta` (β), and the client faults
(a client that does not take part keeps its c_i and v_i).
"""
from __future__ import annotations

import math

import torch

from lab.compress import Channel, NoFeedback, make_compressor
from lab.knobs import Knob, bad
from lab.sync.faults import RoundPlan
from lab.sync.federated import LOCAL_SGD, Federated, LocalTraining
from lab.technique import RoundResult, TrainContext


class Scaffold(Federated):
    reads = LOCAL_SGD
    name = "scaffold"
    label = "SCAFFOLD"
    knobs = {
        "server_lr": Knob(1.0, "server learning rate eta_g", low=0.0, low_open=True, high=1e3),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.c = torch.zeros_like(self.global_row)  # (d,) server control variate
        self.c_local = torch.zeros_like(ctx.cluster.params.detach())  # (n, d) the clients' c_i

    keeps_grad_mean = True  # the control variates are the clients' mean gradients

    def steps_per_client(self) -> torch.Tensor:
        """Every client takes the same K local steps: `local_steps`, or E·⌈mean n_i / B⌉."""
        c = self.config
        k = c.local_steps or c.local_epochs * math.ceil(self.sizes.mean().item() / c.batch_size)
        return torch.full(self.sizes.shape, k, dtype=torch.long)

    def downlink(self, ctx: TrainContext, sampled: list[int]) -> None:
        ctx.collective.server_broadcast(self.global_row, ranks=sampled, tag="model")
        ctx.collective.server_broadcast(self.c, ranks=sampled, tag="control")

    def corrected_sgd(self, ctx: TrainContext, clients: list[int]) -> LocalTraining:
        """K local steps of every participant along g_i(y) − c_i + c."""
        def direction(g, y, mine):
            return g - self.c_local[ctx.cluster.rows_of(mine)[1]] + self.c

        return self.local_sgd(ctx, clients, self.global_row, direction=direction)

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        p, n = plan.participants, ctx.collective.world_size
        out = self.corrected_sgd(ctx, p)
        dy = torch.zeros_like(self.c_local)  # (n, d) rows of participants only
        dc = torch.zeros_like(dy)
        dy[out.rows] = out.params - self.global_row
        dc[out.rows] = out.grad_mean - self.c_local[out.rows]
        self.c_local[out.rows] = out.grad_mean
        mean_w = torch.zeros(n, dtype=torch.float64)  # the server sums in float64 (stores in the run's dtype)
        mean_w[p] = 1.0 / len(p)
        all_w = torch.zeros(n, dtype=torch.float64)
        all_w[p] = 1.0 / n
        mean_dy = ctx.collective.server_reduce(dy, weights=mean_w, ranks=p, tag="model_delta")
        sum_dc = ctx.collective.server_reduce(dc, weights=all_w, ranks=p, tag="control_delta")
        self.global_row = self.global_row + self.config.server_lr * mean_dy
        self.c = self.c + sum_dc
        return RoundResult(self.mean_loss(ctx, out, p))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "c": self.c, "c_local": self.c_local}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.c, self.c_local = state["c"], state["c_local"]


class Scallion(Scaffold):
    name = "scallion"
    label = "SCALLION"
    compressor_path = "uplink"
    takes_feedback = False  # its control variates absorb the compression error
    knobs = {
        "cv_alpha": Knob(0.0, "control-variate step alpha (0 = 1/(1+omega) for unbiased compressors, 1 otherwise)",
                         low=0.0, high=1.0),
    }
    needs_unbiased = True

    @classmethod
    def check(cls, c) -> None:
        super().check(c)
        from lab.compress.registry import spec

        if cls.needs_unbiased and not spec(c.compressor).unbiased:
            bad("compressor", c.compressor, f"an unbiased compressor for technique={cls.name!r} (e.g. 'none', "
                "'randk', 'qsgd'); use technique='scafcom' for biased ones")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        c = self.config
        self.compressor = make_compressor(c.compressor, ratio=c.compression_ratio, shapes=ctx.cluster.shapes,
                                          seed=c.seed, scope=c.compress_scope)
        self.channel = Channel(self.compressor, NoFeedback(self.compressor))  # the uplink: a star push
        if self.needs_unbiased and not self.compressor.unbiased:
            raise ValueError(f"compressor={c.compressor!r} is invalid for technique='{self.name}': it needs an "
                             "unbiased compressor (e.g. 'none', 'randk', 'qsgd'); use technique='scafcom' for "
                             "biased ones")
        omega = self.compressor.variance(ctx.cluster.dim) if self.compressor.unbiased else None
        if c.cv_alpha:
            self.alpha = c.cv_alpha
        elif omega is not None:
            self.alpha = 1.0 / (1.0 + omega)
        elif self.compressor.unbiased:
            raise ValueError(f"cv_alpha=0.0 is invalid with compressor={c.compressor!r}: its variance ω is "
                             "unknown, so set cv_alpha (e.g. 0.25) explicitly")
        else:
            self.alpha = 1.0

    def message(self, u: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """What a participant compresses: SCALLION sends u_i (S, d)."""
        return u

    def state_dict(self) -> dict:
        return {**super().state_dict(), "channel": self.channel.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.channel.load_state_dict(state["channel"])

    def train_round(self, ctx: TrainContext, plan: RoundPlan) -> RoundResult:
        p, n, c = plan.participants, ctx.collective.world_size, self.config
        out = self.corrected_sgd(ctx, p)
        msg = torch.zeros_like(self.c_local)  # (n, d) rows of participants only
        msg[out.rows] = self.message(out.grad_mean - self.c_local[out.rows], out.rows)
        mean_w = torch.zeros(n, dtype=torch.float64)
        mean_w[p] = 1.0 / len(p)
        # (n, d) decoded own rows; (d,) float64: the server's sum stays consistent with the clients' c_i
        mean_delta = self.channel.server_reduce(msg, ctx.collective, weights=mean_w, ranks=p, tag="control_delta")
        local = self.channel.last_local
        self.c_local[out.rows] += self.alpha * local[out.rows]
        k = self.local_steps(p[0])
        self.global_row = (self.global_row - c.server_lr * k * c.lr * (self.c + mean_delta)).to(self.c.dtype)
        self.c = (self.c + (self.alpha * len(p) / n) * mean_delta).to(self.c.dtype)
        return RoundResult(self.mean_loss(ctx, out, p), self.channel.columns())


class Scafcom(Scallion):
    name = "scafcom"
    label = "SCAFCOM"
    knobs = {
        "scafcom_beta": Knob(1.0, "momentum weight beta in (0, 1] (1 = no momentum)", low=0.0, low_open=True, high=1.0),
    }
    needs_unbiased = False

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.v = torch.zeros_like(self.c_local)  # (n, d) momentum on each client's mean local gradient

    def message(self, u: torch.Tensor, rows: list[int]) -> torch.Tensor:
        beta = self.config.scafcom_beta
        self.v[rows] = (1 - beta) * self.v[rows] + beta * (u + self.c_local[rows])
        return self.v[rows] - self.c_local[rows]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.v = state["v"]
