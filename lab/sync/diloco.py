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
every H steps: 1/H of DDP's bytes. With a `compressor` (compressor path
'outer_gradient') the outer gradients Δ_m go through the periodic base's
compressed channel (`lab.compress.make_channel`: the compressed collective
algorithm, with `error_feedback`), and the outer step takes the decoded mean;
the global copy and the outer optimizer stay fp32. The metrics columns
`payload_ratio` and `traffic_ratio` are then the exchange's (`lab.compress.channel`).

Knobs: `sync_period` (H), `optimizer`, `lr`, `adam_beta1`, `adam_beta2`,
`lr_schedule`, `warmup_steps` (inner; the paper uses AdamW with β = (0.9, 0.95),
lr 4e-4, cosine): by default (`optimizer='auto'`, `adam_beta2=0`, `lr` left at
the shared default) the inner optimizer is AdamW β = (0.9, 0.95) at lr 3e-3
(`lab.optim.optimizer_name`, `adam_betas`); `optimizer='sgd'` gives Local SGD's inner steps
(with outer_lr 1 and no outer momentum DiLoCo then equals Local SGD). `outer_lr` (0.7),
`outer_momentum` (0.9), the compressor's. The last round is shortened to the
steps left (the round is `lab.sync.periodic`'s). The evaluated model is the
global θ_g.

With `sharding_degree` S > 1 (`lab.sync.sharded`) each replica of S ranks takes its inner steps as sharded
steps (ZeRO stage `zero_stage`); each rank keeps its shard of θ_g and of the outer momentum, averages only
its shard's outer gradient (d/S values) with its counterparts in the other replicas and takes the outer step
on its shard.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.sync.periodic import PeriodicSync
from lab.sync.sharded import Sharded
from lab.technique import TrainContext


def outer_nesterov_(theta: torch.Tensor, buf: torch.Tensor, delta: torch.Tensor, *, lr: float,
                    momentum: float) -> None:
    """In place: buf = μ·buf + Δ; θ -= lr·(Δ + μ·buf) — torch.optim.SGD(nesterov=True) on gradient Δ.

    With μ = 0 it is θ -= lr·Δ. `theta`, `buf`, `delta` are (d_p,) views (a fragment) or (d,).
    """
    buf.mul_(momentum).add_(delta)
    step = delta.add(buf, alpha=momentum) if momentum else delta
    theta.sub_(step, alpha=lr)


class DiLoCo(Sharded, PeriodicSync):
    name = "diloco"
    label = "DiLoCo"
    compressor_path = "outer_gradient"
    sync_state = ("global_row", "buf")
    default_optimizer = "adamw"  # the paper's inner optimizer, with betas (0.9, 0.95)
    default_adam_beta2 = 0.95
    default_lr = 3e-3  # for that AdamW on the lab's tiny models (the paper: 4e-4 at 150M+ parameters)
    knobs = {
        "outer_lr": Knob(0.7, "outer SGD learning rate", low=0.0, low_open=True, high=1e3),
        "outer_momentum": Knob(0.9, "outer Nesterov momentum", low=0.0, high=1.0, high_open=True),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.global_row = self.consensus(ctx)  # (d,) θ_g, the same on every rank (sharded: its shard, (n, c))
        self.buf = torch.zeros_like(self.global_row)  # (d,) outer momentum

    def sync(self, ctx: TrainContext) -> dict:
        c = self.config
        delta = self.global_row - self.rows(ctx)  # (n, d) outer gradients (pseudo-gradients)
        mean = self.average(ctx, delta, tag="pseudo_grad", reference=self.global_row)  # (d,)
        outer_nesterov_(self.global_row, self.buf, mean, lr=c.outer_lr, momentum=c.outer_momentum)
        self.set_rows(ctx, self.global_row)
        return self.compression_columns()

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        return self.full(ctx, self.global_row)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "global_row": self.global_row, "buf": self.buf}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.global_row, self.buf = state["global_row"], state["buf"]
