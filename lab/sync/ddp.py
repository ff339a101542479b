"""DDP: synchronous data parallelism — gradients averaged across ranks every step.

Paper: Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training". Sent per step: the gradient, d fp32 values per rank, in one
ring (or hierarchical) all-reduce.

With a compressor (`compressor`, `compression_ratio`, `error_feedback`), each rank
compresses its gradient (plus its error-feedback residual), the packets are
all-gathered (sparse payloads do not sum in an all-reduce), and every rank
decodes and averages them in ascending rank order. The metrics column
`measured_ratio` is packet bytes over dense bytes.
"""
from __future__ import annotations

import torch

from lab.comm import ordered_sum
from lab.compress import Identity, make_compressor, make_feedback
from lab.technique import RoundResult, Technique, TrainContext


class DDP(Technique):
    name = "ddp"

    def setup(self, ctx: TrainContext) -> None:
        c = self.config
        self.compressor = make_compressor(c.compressor, ratio=c.compression_ratio)
        self.feedback = make_feedback(c.error_feedback, self.compressor)
        self.measured_ratio = 1.0

    def _sync_grads(self, ctx: TrainContext, grad: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        if isinstance(self.compressor, Identity):
            return ctx.collective.all_reduce(grad, op="mean", tag="grads")
        packet, _ = self.feedback.compress(grad)
        self.measured_ratio = self.compressor.measured_ratio(packet, grad.shape[1])
        gathered = ctx.collective.all_gather(packet, tag="grads")  # tensors (n, P, ...), the same on every rank
        dense = self.compressor.decompress(gathered.map(lambda t: t[0]))  # (P, d)
        return (ordered_sum(dense) / ctx.collective.world_size).expand_as(grad)

    def round(self, ctx: TrainContext) -> RoundResult:
        losses = ctx.local_step(grad_hook=lambda g: self._sync_grads(ctx, g))
        return RoundResult(ctx.collective.mean_metric(losses), {"measured_ratio": self.measured_ratio})

    def state_dict(self) -> dict:
        return {"feedback": self.feedback.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.feedback.load_state_dict(state["feedback"])
