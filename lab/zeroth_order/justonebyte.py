"""Just One Byte (Zelikman, Huang, Liang, Haber, Goodman 2023): decentralized SPSA, one byte per projected gradient.

Spec Part B §B11. Every machine holds the same model θ. Iteration t, machine m,
sample s = 0..S−1: the perturbation z_{m,s} ~ N(0, I) comes from a seed that is
a function of (t, m, s) every machine can compute (a one-time agreement, not
sent per round); g_{m,s} = (L(θ+εz) − L(θ−εz)) / 2ε on the machine's next batch.
Machines broadcast their S scalars; every machine then replays all of them in
(m, s) order:

    θ ← θ − (lr / √N_tot) · g_{m,s} · z_{m,s},      N_tot = M·S scalars received

One-byte code (the spec's design choice, so it truly fits 8 bits): bit 7 is
the sign, bits 0–6 hold q + 63 with q = clamp(round(8 ln|g|), −63, 63); the
receiver uses sign · exp(q / 8) (≈ 6% relative resolution, |g| from 3.9e-4 to
2.6e3). Unlike the released code (which computes the byte but sends the
float), the byte is what is sent and what every machine applies, its own
scalar included. `zo_scalar_format='fp32'` sends the float instead, for comparison.

What is sent per machine per iteration: S bytes (4S with fp32) in one
all-gather. Knobs: `zo_samples` S, `zo_eps` ε, `lr`, `zo_scalar_format`. One
iteration is one step of the `steps` budget; the compute clock counts S
two-point estimates as 2S/3 training steps (two forward passes each).
"""
from __future__ import annotations

import math

import torch

from lab.compress.base import row_seed
from lab.knobs import Knob
from lab.technique import RoundResult, Technique, TrainContext
from lab.zeroth_order.common import ZO_KNOBS, direction, spsa

Q_SCALE, Q_MAX = 8.0, 63


def encode_byte(g: torch.Tensor) -> torch.Tensor:
    """Scalars (...) -> one byte each (uint8): sign bit + 7-bit log magnitude."""
    q = torch.round(Q_SCALE * torch.log(g.abs().clamp(min=1e-30))).clamp(-Q_MAX, Q_MAX)
    return ((g < 0).to(torch.uint8) << 7) | (q + Q_MAX).to(torch.uint8)


def decode_byte(b: torch.Tensor) -> torch.Tensor:
    """uint8 (...) -> the scalars they stand for (float32)."""
    sign = 1.0 - 2.0 * (b >> 7).float()
    q = (b & 0x7F).float() - Q_MAX
    return sign * torch.exp(q / Q_SCALE)


class JustOneByte(Technique):
    name = "justonebyte"
    default_lr = 0.01  # SPSA at 0.5 blows up (loss 137,367 after 2 rounds)
    label = "Just One Byte"
    knobs = {
        **ZO_KNOBS,
        "zo_samples": Knob(4, "projected gradients per machine per iteration", low=1, high=100_000),
        "zo_scalar_format": Knob("int8", "how a projected gradient is sent (one byte or fp32)",
                                 choices=("int8", "fp32")),
    }

    def perturbation_seed(self, t: int, machine: int, sample: int) -> int:
        return row_seed(self.config.seed, t, machine * 65_537 + sample)

    def round(self, ctx: TrainContext) -> RoundResult:
        c = self.config
        t, d, p = ctx.step, ctx.cluster.dim, ctx.collective.world_size
        ctx.ledger.step = t
        theta = ctx.cluster.params.detach()  # (n, d): every row holds the same model
        g = torch.zeros(ctx.cluster.num_local, c.zo_samples)  # (n, S)
        losses = torch.zeros(ctx.cluster.num_local)
        for s in range(c.zo_samples):
            z = torch.stack([direction(self.perturbation_seed(t, m, s), d) for m in ctx.cluster.ranks])  # (n, d)
            xb, yb = ctx.batches.next()
            g[:, s], loss = spsa(ctx, theta, z, xb, yb, eps=c.zo_eps)
            losses += loss / c.zo_samples
        payload = encode_byte(g) if c.zo_scalar_format == "int8" else g
        gathered = ctx.collective.all_gather(payload, tag="scalars")[0]  # (P, S)
        scalars = decode_byte(gathered) if c.zo_scalar_format == "int8" else gathered
        step = torch.zeros(d, dtype=torch.float64)
        for m in range(p):  # replay every machine's perturbations, in (machine, sample) order
            for s in range(c.zo_samples):
                step += float(scalars[m, s]) * direction(self.perturbation_seed(t, m, s), d).double()
        new = theta[0].double() - c.lr / math.sqrt(p * c.zo_samples) * step
        ctx.cluster.set_rows(new.float())
        ctx.step += 1
        ctx.compute_seconds += ctx.step_compute_seconds * 2 * c.zo_samples / 3
        return RoundResult(ctx.collective.mean_metric(losses), {"bytes_per_machine": int(payload[0].numel() *
                                                                                         payload.element_size())})
