"""QSR: Local SGD whose sync period grows as the learning rate decays, H ∝ 1/η².

Paper: Gu, Lyu, Arora, Zhang, Huang, "A Quadratic Synchronization Rule for
Distributed Deep Learning", ICLR 2024 (spec: shared/techniques/sync_and_compression.md §A2;
the rule is [ABSTRACT + CODE], the defaults below are [UNVERIFIED] for this lab's tasks).

Idea: late in training, when the learning rate is small, workers can run much
longer between averages; this saves communication and, in the paper, also
generalises better. After every sync (and at the start), with η the learning
rate of the next step:

    H = max(H_base, ⌊(α / η)²⌋), capped by the steps left (and at least 1);
    H = H_base during warm-up or when α = 0 (then QSR is constant-H Local SGD).

The rule is applied only right after an average, never mid-round. QSR
overrides only `period` of `lab.sync.periodic`: the round and what is sent are
Local SGD's — the parameters, d fp32 values per rank, in one all-reduce, or,
with a `compressor`, the compressed pseudo-gradients.

Knobs: `sync_period` (H_base), `qsr_alpha` (α; SGD and AdamW need very
different scales, e.g. ≈0.2 for SGD, 0.0175 for the paper's ViT AdamW),
`lr_schedule` (QSR only makes sense with a decaying one: 'cosine', or
'cosine_pow2', which rounds η to a power of two as the authors' scheduler
does), `warmup_steps`. Metrics: `sync_period` (this round's H) and `lr` (the
learning rate it was computed from).
"""
from __future__ import annotations

import math

from lab.knobs import Knob
from lab.sync.local_sgd import LocalSGD
from lab.technique import TrainContext


def qsr_period(lr: float, *, alpha: float, h_base: int, step: int, warmup_steps: int, remaining: int) -> int:
    """The quadratic synchronization rule: the number of local steps of the next round."""
    if step < warmup_steps or alpha == 0:
        h = h_base
    elif lr <= 0:
        h = remaining
    else:
        h = max(h_base, math.floor((alpha / lr) ** 2))
    return max(1, min(h, remaining))


class QSR(LocalSGD):
    name = "qsr"
    label = "QSR"
    reads = ("lr_schedule", "warmup_steps")
    label_knobs = ("qsr_alpha",)
    knobs = {
        "qsr_alpha": Knob(0.2, "H = max(sync_period, floor((qsr_alpha / lr)^2)) after each sync", low=0.0, high=1e3,
                          probe=2.0),  # (2 / 0.5)^2 = 16: one sync in the contract tests' 8 steps instead of two
    }

    def period(self, ctx: TrainContext) -> tuple[int, dict]:
        """QSR's period rule; the round itself (and its compressed path) is Local SGD's."""
        c = self.config
        lr = ctx.lr_now()  # the learning rate right after the last sync (or at the start)
        h = qsr_period(lr, alpha=c.qsr_alpha, h_base=c.sync_period, step=ctx.step, warmup_steps=c.warmup_steps,
                       remaining=c.steps - ctx.step)
        return h, {"sync_period": h, "lr": lr}
