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
from lab.knobs import merged
from lab.models import ModelSpec
from lab.schedule import lr_at
from lab.topology import Topology


class Stopped(Exception):
    """The user's Stop, seen at the next local step: the run ends with status 'stopped', finished rows kept."""


class Diverged(Exception):
    """A non-finite loss, gradient or parameter: the run stops at `step` with status 'diverged'."""

    def __init__(self, step: int, quantity: str):
        super().__init__(f"non-finite {quantity} at step {step}")
        self.step, self.quantity = step, quantity


@dataclass
class TrainContext:
    config: object  # lab.config.ExperimentConfig
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
    #: a threading.Event the user sets to stop the run (checked every local step); None when built by hand
    stop: object = None

    @property
    def step_compute_seconds(self) -> float:
        """Simulated compute time of one local step on one rank."""
        return self.topology.compute_seconds(self.spec.flops_per_example * self.config.batch_size)

    def local_step(self, *, grad_hook=None) -> torch.Tensor:
        """One optimizer step on every local rank, each on its own next batch; returns losses (n,).

        `grad_hook(grad (n, d)) -> (n, d)` runs between backward and the optimizer
        step (where DDP communicates); clipping, if configured, follows it.
        """
        self.check_stop()
        self.ledger.step = self.step
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.batches.next()
        losses = self.cluster.backward(x, y)
        self.guard("loss", losses)
        self.guard("gradient", self.cluster.params.grad)
        self.compute_seconds += self.step_compute_seconds  # counted before the hook: its messages follow it
        if grad_hook is not None:
            self.cluster.params.grad = grad_hook(self.cluster.params.grad)
        if self.config.grad_clip:
            self.cluster.clip_grad_norm_(self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return losses

    def check_stop(self) -> None:
        """Raise Stopped if the run's stop event is set: called every local step, so Stop acts within one step."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped()

    def guard(self, quantity: str, x: torch.Tensor) -> None:
        """Raise Diverged if `x` holds a NaN or inf (unless `on_divergence='continue'`)."""
        if self.config.on_divergence == "stop" and x is not None and not all_finite(x):
            raise Diverged(self.step, quantity)

    def lr_now(self) -> float:
        """Learning rate of the next local step under `config.lr_schedule` (lab.schedule)."""
        c = self.config
        return lr_at(self.step, base_lr=c.lr, schedule=c.lr_schedule, total_steps=c.steps, warmup_steps=c.warmup_steps)

    def mean_over_ranks(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean of local rows over all ranks (d,), not recorded (an observer's view)."""
        return self.collective.all_reduce(rows.detach(), op="mean", record=False)[0]


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of `x` is finite: its smallest and largest elements are (a NaN or an inf anywhere
    shows in them), found in one pass without a mask the size of `x`."""
    if not x.is_floating_point() or not x.numel():
        return True
    lo, hi = torch.aminmax(x.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


@dataclass
class RoundResult:
    loss: float  # mean training loss over the round's ranks and steps
    extras: dict = field(default_factory=dict)  # technique-specific metrics columns


#: the common config fields of the local optimizer, for techniques that step `ctx.optimizer`
LOCAL_OPTIMIZER = ("optimizer", "momentum", "weight_decay", "grad_clip", "lr_schedule", "warmup_steps", "adam_beta1",
                   "adam_beta2")

#: where a technique takes a compressor (what it compresses)
COMPRESSOR_PATHS = {
    "gradient": "gradients, every step",
    "pseudo_gradient": "pseudo-gradients (the change since the last sync)",
    "outer_gradient": "outer gradients",
    "uplink": "client updates on the uplink",
    "downlink": "the server's model on the downlink",
}


class Technique:
    """Base class. A subclass sets `name`, a docstring (idea, paper, what is sent, knobs), `round`, and
    declares what it reads:

    - `knobs`: the config fields it introduces, `{name: lab.knobs.Knob}`;
    - `reads`: config fields declared elsewhere (the common ones in `lab.config`, or another
      technique's) that it reads;
    - `compressor_path`: where it takes the `compressor` (a key of `COMPRESSOR_PATHS`), or None;
    - `label`: its name in charts; `budget`: whether `steps` or `rounds` sizes a run; `federated`: a
      server-based round over sampled clients;
    - `check(config)`: its own cross-field rules, raising ValueError on construction of the config.

    `knobs` and `reads` merge along the class hierarchy, so a subclass declares only what is its own.
    """

    name: str = ""
    label: str = ""
    #: what `config.steps`/`config.rounds` budget the run: 'steps' or 'rounds'
    budget: str = "steps"
    federated: bool = False
    knobs: dict = {}
    reads: tuple = ()
    compressor_path: str | None = None
    #: with a compressor: whether it reads `error_feedback` (False where the technique corrects the error itself)
    takes_feedback: bool = True
    #: the learning rate used when the config leaves `lr` at the shared default (where that default diverges)
    default_lr: float | None = None
    #: this technique's own defaults of knobs it reads, used where the config leaves a knob at the shared
    #: default (e.g. D-PSGD gossips every step: {'sync_period': 1}); the config then holds the applied value
    defaults: dict = {}
    #: the local optimizer under `optimizer='auto'`, and AdamW's β2 under `adam_beta2=0` (lab.optim); `default_lr`
    #: applies only with this optimizer
    default_optimizer: str = "sgd"
    default_adam_beta2: float = 0.999
    #: fields shown in the chart label beside the technique's name (e.g. its period H)
    label_knobs: tuple = ()
    #: settings the contract tests (tests/test_contracts.py) add to their tiny run of this technique (4 workers,
    #: 8 steps or 2 rounds), where the defaults would show nothing in it or be slow: e.g. a sync period that fits
    #: in 8 steps, a compatible dataset and model, smaller search sizes. Merged along the class hierarchy.
    contract_settings: dict = {}

    def __init__(self, config):
        self.config = config

    # ---- declarations -------------------------------------------------------------------------------
    @classmethod
    def total(cls, config) -> int:
        """The run's length in the technique's budget unit: `rounds` or `steps`."""
        return config.rounds if cls.budget == "rounds" else config.steps

    @classmethod
    def declared_knobs(cls) -> dict:
        """Every knob this class and its bases introduce, `{field: Knob}`."""
        return merged(_lineage(cls), "knobs")

    @classmethod
    def read_fields(cls) -> frozenset[str]:
        """Names of the technique-specific config fields this technique reads (declared or referenced)."""
        return frozenset(cls.declared_knobs()) | frozenset(merged(_lineage(cls), "reads"))

    @classmethod
    def contract_setup(cls) -> dict:
        """`contract_settings` of this class and its bases (a subclass's win)."""
        return merged(_lineage(cls), "contract_settings")

    @classmethod
    def own_defaults(cls) -> dict:
        """`defaults` of this class and its bases (a subclass's win)."""
        return merged(_lineage(cls), "defaults")

    @classmethod
    def check(cls, config) -> None:
        """Cross-field rules of this technique (bounds and choices are the knobs'); raise via lab.knobs.bad."""

    @classmethod
    def describe(cls, config) -> str:
        """The chart label of a run: the technique and the settings it really applied."""
        parts = [cls.label or cls.name]
        for name in sorted(cls.label_fields()):
            parts.append(f"{LABEL_NAMES.get(name, name)}={_short(getattr(config, name))}")
        if cls.compressor_path and config.compressor != "none":
            from lab.compress.registry import describe_setting

            parts.append(describe_setting(config))
        return " ".join(parts)

    @classmethod
    def label_fields(cls) -> tuple:
        """Fields shown in the chart label (subclasses name their main knob)."""
        return merged(_lineage(cls), "label_knobs")

    # ---- running ------------------------------------------------------------------------------------
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


#: short names of knobs in chart labels
LABEL_NAMES = {"sync_period": "H", "sharding_degree": "S", "zero_stage": "stage",
               "num_fragments": "P", "outer_bits": "bits", "client_fraction": "C"}


def _lineage(cls) -> list:
    return [c for c in reversed(cls.__mro__) if issubclass(c, Technique)]


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
