"""DDP: synchronous data parallelism — gradients averaged across ranks every step.

Paper: Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training". Sent per step: the gradient, d fp32 values per rank, in one
ring (or hierarchical) all-reduce.

With a compressor (`compressor`, `compression_ratio`, `error_feedback`), each rank
compresses its gradient through a `lab.compress.Channel`: error feedback
prepares what is compressed, the compressor moves it across ranks in its own
way (packets all-gathered and decoded in ascending rank order — sparse payloads
do not sum in an all-reduce; half precision all-reduced; PowerSGD's P and Q
factors all-reduced) and every rank applies the same averaged gradient. The
metrics column `measured_ratio` is the message's encoded bytes over its dense
fp32 bytes.

With `overlap=True` (dense gradients) the all-reduce is cut into `num_buckets`
buckets that overlap the backward pass on the simulated clock (lab.clock), as
PyTorch DDP's gradient buckets do; the bytes are the same, the latency is paid
once per bucket.
"""
from __future__ import annotations

import torch

from lab.knobs import Knob
from lab.compress import make_channel
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext


class DDP(Technique):
    name = "ddp"
    label = "DDP"
    reads = LOCAL_OPTIMIZER
    compressor_path = "gradient"
    knobs = {
        "overlap": Knob(False, "bucketed gradient all-reduce overlaps the backward pass on the simulated clock"),
        "num_buckets": Knob(4, "gradient buckets, each all-reduced when its backward slice is done", low=1, high=10_000, read_when=lambda c: c.overlap, why="only overlap=True reads it"),
    }

    def setup(self, ctx: TrainContext) -> None:
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
        losses = ctx.local_step(grad_hook=lambda g: self._sync_grads(ctx, g))
        return RoundResult(ctx.collective.mean_metric(losses), {"measured_ratio": self.channel.measured_ratio})

    def state_dict(self) -> dict:
        return {"channel": self.channel.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.channel.load_state_dict(state["channel"])
