"""DDP: synchronous data parallelism — gradients averaged across ranks every step.

Paper: Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training". Sent per step: the gradient, d fp32 values per rank, in one
ring (or hierarchical) all-reduce.

With a compressor (`compressor`, `compression_ratio`, `error_feedback`), each rank
compresses its gradient through a `lab.compress.Channel`: error feedback
prepares what is compressed, and the compressed all-reduce algorithm the
topology chooses (`compress_algorithm`: two-phase by default — chunk j to rank
j, reduced, re-compressed and all-gathered, error feedback on both hops — or
the all-gather of encoded messages, or a parameter server; half precision and
PowerSGD's P and Q factors are all-reduced) moves it, and every rank applies
the same averaged gradient. Metrics columns `payload_ratio` (one message's
encoded over dense fp32 bytes) and `traffic_ratio` (the busiest rank's bytes
over the dense ring all-reduce's).

With `sharding_degree` S > 1 (`lab.sync.sharded`) every step is a sharded step inside each of the R = P/S
replicas (ZeRO stage `zero_stage`), and the gradient slice of each rank (d/S values) is averaged with its
counterparts in the other replicas, through the compressor when one is set (`lab.compress.grouped`);
uncompressed this is ZeRO's hybrid sharding, tag `grads_replicas`.

With `overlap=True` (dense gradients, no sharding) the all-reduce is cut into `num_buckets`
buckets that overlap the backward pass on the simulated clock (lab.clock), as
PyTorch DDP's gradient buckets do; the bytes are the same, the latency is paid
once per bucket.
"""
from __future__ import annotations

import torch

from lab.compress import make_channel
from lab.knobs import Knob
from lab.sharding.options import degree
from lab.sync.sharded import Sharded
from lab.technique import LOCAL_OPTIMIZER, RoundResult, TrainContext


class DDP(Sharded):
    name = "ddp"
    label = "DDP"
    reads = LOCAL_OPTIMIZER
    compressor_path = "gradient"
    knobs = {
        "overlap": Knob(False, "bucketed gradient all-reduce overlaps the backward pass on the simulated clock",
                        read_when=lambda c: degree(c) == 1, why="a sharded step (sharding_degree > 1) is not bucketed"),
        "num_buckets": Knob(4, "gradient buckets, each all-reduced when its backward slice is done", low=1,
                            high=10_000, read_when=lambda c: c.overlap, why="only overlap=True reads it",
                            probe_with={"overlap": True}),
    }

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)  # the sharded step, with sharding_degree > 1
        self.channel = make_channel(self.config, ctx)

    def _sync_grads(self, ctx: TrainContext, grad: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        if self.channel.dense:
            if self.config.overlap and ctx.clock is not None:
                return self._bucketed(ctx, grad)
            return ctx.collective.all_reduce(grad, op="mean", tag="grads")
        self.channel.set_reference(ctx.cluster.params.detach()[0])  # every rank holds the same model
        return self.channel.all_reduce_mean(grad, ctx.collective, tag="grads")

    def _bucketed(self, ctx: TrainContext, grad: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        """`overlap=True`: `num_buckets` all-reduces, last layers' bucket first, each starting on the simulated
        clock when its slice of the backward pass is done; the optimizer step waits for all. The sums are
        elementwise, so the result equals one all-reduce of the whole gradient."""
        ctx.clock.sync()  # this step's forward and backward are on the timeline before its buckets
        bounds = torch.linspace(0, grad.shape[1], self.config.num_buckets + 1).round().long().tolist()
        out = torch.empty_like(grad)
        buckets = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo][::-1]
        for b, (lo, hi) in enumerate(buckets):
            with ctx.clock.overlapping(ctx.clock.backward_ready((b + 1) / len(buckets))):
                out[:, lo:hi] = ctx.collective.all_reduce(grad[:, lo:hi].contiguous(), op="mean", tag="grads")
        ctx.clock.wait()
        return out

    def round(self, ctx: TrainContext) -> RoundResult:
        if self.sharded is not None:  # each rank's gradient slice averaged with its counterparts
            sh = self.sharded
            losses = sh.step(ctx, exchange=lambda g: sh.exchange_mean(ctx, g, tag="grads_replicas",
                                                                       channel=self.channel))
            columns = {} if self.channel.dense else self.channel.columns()
            return RoundResult(ctx.collective.mean_metric(losses), {**columns, **self.sharding_columns()})
        losses = ctx.local_step(grad_hook=lambda g: self._sync_grads(ctx, g))
        return RoundResult(ctx.collective.mean_metric(losses), {} if self.channel.dense else self.channel.columns())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "channel": self.channel.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.channel.load_state_dict(state["channel"])
