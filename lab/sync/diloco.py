"""DiLoCo: H inner optimizer steps per worker, then an outer Nesterov step on the averaged change.

Paper: Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
Language Models" (spec: shared/techniques/sync_and_compression.md §A3; round
and defaults [CODE] from the OpenDiLoCo reproduction).

Round (every H inner steps):

    every worker m: H steps of its own inner optimizer (AdamW in the paper), state kept across rounds
    Δ_m = θ_g − θ_m                         pseudo-gradient: OLD global minus NEW local
    Δ   = mean_m Δ_m                        one all-reduce of d fp32 values per rank
    buf = μ·buf + Δ ;  θ_g ← θ_g − lr_out·(Δ + μ·buf)      outer SGD, Nesterov (PyTorch semantics)
    θ_m ← θ_g for every worker

With lr_out = 1 and μ = 0 the outer step is plain parameter averaging (Local
SGD with the inner optimizer); with one worker it is the inner optimizer alone.
Outer lr 0.7 with Nesterov 0.9 deliberately moves past the average.

Sent per round: the pseudo-gradient, d fp32 values per rank, in one all-reduce
every H steps: 1/H of DDP's bytes. Knobs: `sync_period` (H), `optimizer`,
`lr`, `lr_schedule`, `warmup_steps` (inner; the paper uses AdamW, lr 4e-4,
cosine), `outer_lr` (0.7), `outer_momentum` (0.9). The last round is shortened
to the steps left. The evaluated model is the global θ_g.
"""
from __future__ import annotations

import torch

from lab.technique import RoundResult, Technique, TrainContext


def outer_nesterov_(theta: torch.Tensor, buf: torch.Tensor, delta: torch.Tensor, *, lr: float,
                    momentum: float) -> None:
    """In place: buf = μ·buf + Δ; θ -= lr·(Δ + μ·buf) — torch.optim.SGD(nesterov=True) on gradient Δ.

    With μ = 0 it is θ -= lr·Δ. `theta`, `buf`, `delta` are (d_p,) views (a fragment) or (d,).
    """
    buf.mul_(momentum).add_(delta)
    step = delta.add(buf, alpha=momentum) if momentum else delta
    theta.sub_(step, alpha=lr)


class DiLoCo(Technique):
    name = "diloco"

    def setup(self, ctx: TrainContext) -> None:
        self.global_row = ctx.cluster.params.detach()[0].clone()  # (d,) θ_g, the same on every rank
        self.buf = torch.zeros_like(self.global_row)  # (d,) outer momentum

    def round(self, ctx: TrainContext) -> RoundResult:
        c = self.config
        h = min(c.sync_period, c.steps - ctx.step)
        losses = torch.stack([ctx.local_step() for _ in range(h)])  # (h, n)
        delta = self.global_row - ctx.cluster.params.detach()  # (n, d) pseudo-gradients
        mean = ctx.collective.all_reduce(delta, op="mean", tag="pseudo_grad")[0]  # (d,)
        outer_nesterov_(self.global_row, self.buf, mean, lr=c.outer_lr, momentum=c.outer_momentum)
        ctx.cluster.set_rows(self.global_row)
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)), {"sync_period": h})

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        return self.global_row

    def state_dict(self) -> dict:
        return {"global_row": self.global_row, "buf": self.buf}

    def load_state_dict(self, state: dict) -> None:
        self.global_row, self.buf = state["global_row"], state["buf"]
