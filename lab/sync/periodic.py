"""Periodic sync: the round every "H local steps, then communicate" technique shares.

A round is `period(ctx)` local steps on every rank (each on its own batches,
with its own optimizer state, which is never averaged), then `sync(ctx)`, the
technique's one exchange. A subclass overrides only what is its own:

- `sync(ctx) -> dict` (required): what is sent and how the ranks' models change;
  the dict is added to the round's metrics columns;
- `period(ctx) -> (h, columns)`: the local steps of the next round — by default
  `sync_period` H, the last round cut to the steps left (QSR grows H as the
  learning rate decays);
- `sync_first = True` for merge-then-train techniques (the exchange opens the
  round instead of closing it);
- `observe(ctx) -> dict`: metrics columns taken at the end of the round (an
  observer's view, e.g. every agent's accuracy after its local steps).

Techniques on this base: Local SGD and QSR (parameter averaging, or compressed
pseudo-gradients), DiLoCo and Streaming DiLoCo (an outer optimizer step on the
averaged outer gradient; Streaming DiLoCo keeps its own event loop of staggered
fragments), D-PSGD (gossip with graph neighbours) and DIMAT (merge with aligned
neighbours).

Compression: a subclass that declares `compressor_path` gets `self.channel`,
built by `lab.compress.make_channel` from `compressor`, `compression_ratio`,
`error_feedback` (so it runs whichever compressed collective algorithm the
channel chooses, and the Ledger counts its real traffic), and `average(ctx,
rows, tag=...)`, the mean over ranks — a plain fp32 all-reduce without a
compressor, the channel's compressed all-reduce with one. The metrics column
`payload_ratio` and `traffic_ratio` (`Channel.columns()`) are then the last exchange's.

Knob: `sync_period` H (the local optimizer's knobs too: `optimizer`, `lr`, ...).
"""
from __future__ import annotations

import torch

from lab.compress import make_channel
from lab.knobs import Knob
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext


class PeriodicSync(Technique):
    reads = LOCAL_OPTIMIZER
    label_knobs = ("sync_period",)
    contract_settings = {"sync_period": 4}  # two syncs in the contract tests' 8 steps
    knobs = {
        "sync_period": Knob(16, "local steps between syncs H (QSR: its smallest H)", low=1, high=10**6),
    }
    #: merge-then-train: `sync` opens the round (before the local steps) instead of closing it
    sync_first: bool = False

    channel = None  # the compressed channel, when the technique declares a compressor_path

    def setup(self, ctx: TrainContext) -> None:
        if self.compressor_path is not None:
            self.channel = make_channel(self.channel_config(), ctx)

    def channel_config(self):
        """The config the compressed channel is built from (a technique may translate its own knobs)."""
        return self.config

    # ---- what a subclass overrides --------------------------------------------------------------
    def period(self, ctx: TrainContext) -> tuple[int, dict]:
        """Local steps of the next round (capped by the steps left) and the metrics columns that explain it."""
        h = min(self.config.sync_period, self.config.steps - ctx.step)
        return h, {"sync_period": h}

    def sync(self, ctx: TrainContext) -> dict:
        """The round's exchange; returns metrics columns."""
        raise NotImplementedError

    def observe(self, ctx: TrainContext) -> dict:
        """Metrics columns at the end of the round (nothing sent); none by default."""
        return {}

    # ---- the shared round -----------------------------------------------------------------------
    def local_steps(self, ctx: TrainContext, h: int) -> torch.Tensor:
        """h optimizer steps on every local rank; their losses (h, n)."""
        return torch.stack([ctx.local_step() for _ in range(h)])

    def round(self, ctx: TrainContext) -> RoundResult:
        h, extras = self.period(ctx)
        if self.sync_first:
            extras.update(self.sync(ctx))
        losses = self.local_steps(ctx, h)  # (h, n)
        if not self.sync_first:
            extras.update(self.sync(ctx))
        extras.update(self.observe(ctx))
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)), extras)

    # ---- the exchange -----------------------------------------------------------------------------
    @property
    def compressing(self) -> bool:
        """Whether `average` goes through a compressor (a compressor path and compressor != 'none')."""
        return self.channel is not None and not self.channel.dense

    def average(self, ctx: TrainContext, rows: torch.Tensor, *, tag: str, reference: torch.Tensor | None = None,
                channel=None, segments=None) -> torch.Tensor:
        """The mean of `rows` (n, d) over all ranks (d,): an fp32 all-reduce, or the compressed all-reduce of
        `channel` (default `self.channel`; with its error feedback). `reference` (d,): the model every rank
        holds, for compressors that decode through it (3SFC); `segments`: the parameter-tensor lengths of a
        part of the model (per-layer compression; the whole model's by default)."""
        channel = self.channel if channel is None else channel
        if channel is None or channel.dense:
            return ctx.collective.all_reduce(rows, op="mean", tag=tag)[0]
        if reference is not None:
            channel.set_reference(reference)
        return channel.all_reduce_mean(rows, ctx.collective, tag=tag, segments=segments)[0]

    def compression_columns(self) -> dict:
        """The metrics columns of the last compressed exchange (none without a compressor)."""
        return self.channel.columns() if self.compressing else {}

    def state_dict(self) -> dict:
        return {"channel": self.channel.state_dict()} if self.channel is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.channel is not None:
            self.channel.load_state_dict(state["channel"])
