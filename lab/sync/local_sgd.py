"""Local SGD: H local steps on each rank, then average the parameters.

Papers: Stich 2019, "Local SGD Converges Fast and Communicates Little"; Lin et al.
2020, "Don't Use Large Mini-Batches, Use Local SGD". Sent per round: the
parameters, d fp32 values per rank, in one all-reduce every H steps — 1/H of
DDP's bytes. H = 1 is DDP with parameter instead of gradient averaging (equal to
DDP for plain SGD).

Knob: `sync_period` H. The last round is shortened to the steps left, and ends
with an average too, so the final model is the consensus. Optimizer state
(momentum, Adam moments) stays local and is not averaged.

With a compressor (`compressor`, `compression_ratio`, `error_feedback`), what is
sent is the pseudo-gradient Δ_m = x_anchor − x_m (the change since the last
sync), compressed through a `lab.compress.Channel`; every rank then sets
x = x_anchor − mean_m decode(Δ_m), the new anchor. Uncompressed, this equals
parameter averaging; the metrics column `measured_ratio` is the message's
encoded over dense bytes.
"""
from __future__ import annotations

import torch

from lab.compress import make_channel
from lab.technique import RoundResult, Technique, TrainContext


class LocalSGD(Technique):
    name = "local_sgd"

    def setup(self, ctx: TrainContext) -> None:
        self.channel = make_channel(self.config, ctx)
        self.anchor = ctx.cluster.params.detach()[0].clone()  # (d,) the model at the last sync

    def round(self, ctx: TrainContext) -> RoundResult:
        h = min(self.config.sync_period, self.config.steps - ctx.step)
        losses = torch.stack([ctx.local_step() for _ in range(h)])  # (h, n)
        extras = {"sync_period": h}
        if self.channel.dense:
            avg = ctx.collective.all_reduce(ctx.cluster.params.detach(), op="mean", tag="params")
        else:
            self.channel.set_reference(self.anchor)
            delta = self.anchor - ctx.cluster.params.detach()  # (n, d) pseudo-gradients
            avg = self.anchor - self.channel.all_reduce_mean(delta, ctx.collective, tag="pseudo_grad")
            self.anchor = avg[0].clone()
            extras["measured_ratio"] = self.channel.measured_ratio
        ctx.cluster.set_rows(avg)
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)), extras)

    def state_dict(self) -> dict:
        return {"channel": self.channel.state_dict(), "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.channel.load_state_dict(state["channel"])
        self.anchor = state["anchor"]
