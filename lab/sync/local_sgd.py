"""Local SGD: H local steps on each rank, then average the parameters.

Papers: Stich 2019, "Local SGD Converges Fast and Communicates Little"; Lin et al.
2020, "Don't Use Large Mini-Batches, Use Local SGD". Sent per round: the
parameters, d fp32 values per rank, in one all-reduce every H steps — 1/H of
DDP's bytes. H = 1 is DDP with parameter instead of gradient averaging (equal to
DDP for plain SGD).

Knob: `sync_period` H. The last round is shortened to the steps left, and ends
with an average too, so the final model is the consensus. Optimizer state
(momentum, Adam moments) stays local and is not averaged.
"""
from __future__ import annotations

import torch

from lab.technique import RoundResult, Technique, TrainContext


class LocalSGD(Technique):
    name = "local_sgd"

    def round(self, ctx: TrainContext) -> RoundResult:
        h = min(self.config.sync_period, self.config.steps - ctx.step)
        losses = torch.stack([ctx.local_step() for _ in range(h)])  # (h, n)
        avg = ctx.collective.all_reduce(ctx.cluster.params.detach(), op="mean", tag="params")
        ctx.cluster.set_rows(avg)
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)), {"sync_period": h})
