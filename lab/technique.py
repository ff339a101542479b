"""What every technique plugs into: the training context and the Technique base class.

A technique drives one *round* at a time: DDP's round is one step with a gradient
all-reduce, Local SGD's is H local steps and a parameter average, FedAvg's is
sample → broadcast → local epochs → weighted average. It talks to other ranks
only through `ctx.collective`, so the same code runs simulated and on
torch.distributed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lab.cluster import Cluster
from lab.comm import Collective, Ledger
from lab.data import RankBatches
from lab.models import ModelSpec
from lab.schedule import lr_at
from lab.topology import Topology


@dataclass
class TrainContext:
    config: object  # lab.experiment.ExperimentConfig
    cluster: Cluster
    collective: Collective
    ledger: Ledger
    topology: Topology
    batches: RankBatches
    spec: ModelSpec
    optimizer: torch.optim.Optimizer | None
    step: int = 0  # local steps taken so far
    compute_seconds: float = 0.0
    rounds: int = 0
    #: communication time hidden behind compute (overlap, e.g. Streaming DiLoCo); subtracted from sim_seconds
    comm_hidden_seconds: float = 0.0
    #: the Dataset (lab.data), for observers only (e.g. personalized test accuracy); None when built by hand
    data: object = None
    #: the simulated per-rank timeline (lab.clock.Clock), fed by the Ledger and `compute_seconds`; None by hand
    clock: object = None

    @property
    def step_compute_seconds(self) -> float:
        """Simulated compute time of one local step on one rank."""
        return self.topology.compute_seconds(self.spec.flops_per_example * self.config.batch_size)

    def local_step(self, *, grad_hook=None) -> torch.Tensor:
        """One optimizer step on every local rank, each on its own next batch; returns losses (n,).

        `grad_hook(grad (n, d)) -> (n, d)` runs between backward and the optimizer
        step (where DDP communicates); clipping, if configured, follows it.
        """
        self.ledger.step = self.step
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.batches.next()
        losses = self.cluster.backward(x, y)
        self.compute_seconds += self.step_compute_seconds  # counted before the hook: its messages follow it
        if grad_hook is not None:
            self.cluster.params.grad = grad_hook(self.cluster.params.grad)
        if self.config.grad_clip:
            self.cluster.clip_grad_norm_(self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return losses

    def lr_now(self) -> float:
        """Learning rate of the next local step under `config.lr_schedule` (lab.schedule)."""
        c = self.config
        return lr_at(self.step, base_lr=c.lr, schedule=c.lr_schedule, total_steps=c.steps, warmup_steps=c.warmup_steps)

    def mean_over_ranks(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean of local rows over all ranks (d,), not recorded (an observer's view)."""
        return self.collective.all_reduce(rows.detach(), op="mean", record=False)[0]


@dataclass
class RoundResult:
    loss: float  # mean training loss over the round's ranks and steps
    extras: dict = field(default_factory=dict)  # technique-specific metrics columns


class Technique:
    """Base class. Subclasses set `name`, a docstring (idea, paper, what is sent, knobs), and `round`."""

    name: str = ""
    #: what `config.steps`/`config.rounds` budget the run: 'steps' or 'rounds'
    budget: str = "steps"

    def __init__(self, config):
        self.config = config

    def setup(self, ctx: TrainContext) -> None:
        pass

    def round(self, ctx: TrainContext) -> RoundResult:
        raise NotImplementedError

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        """The model to evaluate (d,): by default the average of the ranks' models."""
        return ctx.mean_over_ranks(ctx.cluster.params)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
