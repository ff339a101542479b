"""Local SGD: H local steps on each rank, then average the parameters.

Papers: Stich 2019, "Local SGD Converges Fast and Communicates Little"; Lin et al.
2020, "Don't Use Large Mini-Batches, Use Local SGD". Sent per round: the
parameters, d fp32 values per rank, in one all-reduce every H steps — 1/H of
DDP's bytes. H = 1 is DDP with parameter instead of gradient averaging (equal to
DDP for plain SGD).

Knob: `sync_period` H (the round is `lab.sync.periodic`'s). The last round is
shortened to the steps left, and ends with an average too, so the final model
is the consensus. Optimizer state (momentum, Adam moments) stays local and is
not averaged.

With a compressor (`compressor`, `compression_ratio`, `error_feedback`), what is
sent is the pseudo-gradient Δ_m = x_anchor − x_m (the change since the last
sync), through the periodic base's compressed channel; every rank then sets
x = x_anchor − mean_m decode(Δ_m), the new anchor. Uncompressed, this equals
parameter averaging; the metrics column `measured_ratio` is the message's
encoded over dense bytes.
"""
from __future__ import annotations

from lab.sync.periodic import PeriodicSync
from lab.technique import TrainContext


class LocalSGD(PeriodicSync):
    name = "local_sgd"
    label = "Local SGD"
    compressor_path = "pseudo_gradient"

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.anchor = ctx.cluster.params.detach()[0].clone()  # (d,) the model at the last sync

    def sync(self, ctx: TrainContext) -> dict:
        params = ctx.cluster.params.detach()  # (n, d)
        if not self.compressing:
            ctx.cluster.set_rows(self.average(ctx, params, tag="params"))
            return {}
        delta = self.anchor - params  # (n, d) pseudo-gradients
        self.anchor = self.anchor - self.average(ctx, delta, tag="pseudo_grad", reference=self.anchor)
        ctx.cluster.set_rows(self.anchor)
        return self.compression_columns()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.anchor = state["anchor"]
