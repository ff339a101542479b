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
parameter averaging; the metrics columns `payload_ratio` and `traffic_ratio`
are the exchange's (`lab.compress.channel`).

With `sharding_degree` S > 1 (`lab.sync.sharded`) each replica of S ranks takes its H steps as sharded steps
(ZeRO stage `zero_stage`) and each rank averages only its shard (d/S values) with its counterparts in the
other replicas; the anchor is each rank's shard of the model at the last sync.
"""
from __future__ import annotations

from lab.sync.periodic import PeriodicSync
from lab.sync.sharded import Sharded
from lab.technique import TrainContext


class LocalSGD(Sharded, PeriodicSync):
    name = "local_sgd"
    label = "Local SGD"
    compressor_path = "pseudo_gradient"
    sync_state = ("anchor",)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.anchor = self.consensus(ctx)  # (d,) the model at the last sync (sharded: each rank's shard, (n, c))

    def sync(self, ctx: TrainContext) -> dict:
        params = self.rows(ctx)  # (n, d), or each rank's shard (n, c)
        if not self.compressing:
            self.set_rows(ctx, self.average(ctx, params, tag="params"))
            return {}
        delta = self.anchor - params  # (n, d) pseudo-gradients
        self.anchor = self.anchor - self.average(ctx, delta, tag="pseudo_grad", reference=self.anchor)
        self.set_rows(ctx, self.anchor)
        return self.compression_columns()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.anchor = state["anchor"]
