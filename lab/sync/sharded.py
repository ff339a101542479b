"""Composed runs: ZeRO/FSDP sharding inside each replica, a sync technique across replicas, on a topology.

The four knobs compose the way training stacks compose them (FSDP/HSDP with DiLoCo as in torchft, ZeRO
inside a data-parallel group): the P = num_workers ranks form R = P/S replicas of S ranks each
(`sharding_degree` S). Inside a replica the S ranks train as one data-parallel worker whose model state is
sharded S ways — ZeRO stage `zero_stage` 1–3 with the ZeRO++ options qwZ and hpZ (`zeropp`) — through the
one sharded step of `lab.sharding.step.ShardedStep` (which ZeRO runs too): each step reduce-scatters the
gradient of the replica's S batches (the replica steps on their mean: it trains with S times the batch),
steps the optimizer on its slice of c = d_pad/S values and all-gathers the updated slices (stages 1–2; stage
3 gathers for the forward and the backward). Across replicas the chosen technique syncs **shard-wise**: each
rank exchanges only its own slice with its counterparts — the R ranks with the same shard index — so a rank
sends d/S values where the unsharded technique sends d, through the technique's compressor (`compressor`,
`compression_ratio`, `error_feedback`, `compress_algorithm`: `lab.compress.grouped`, the compressed
all-reduce inside each group of counterparts, error feedback per rank):

- `ddp`: every step, the gradient slice averaged over the counterparts before the optimizer step (uncompressed
  this is ZeRO's hybrid sharding: the same numbers as DDP, tag `grads_replicas`);
- `local_sgd`, `qsr`: every H steps, the slices averaged (or, compressed, the pseudo-gradient slices);
- `diloco`: every H steps, the outer gradient slices averaged; the outer Nesterov step runs on the slices
  (each rank keeps its shard of θ_g and of the outer momentum);
- `streaming_diloco`: every H steps in P fragments — with sharding, fragment p is the p-th contiguous part of
  every rank's shard (`fragment_pattern='contiguous'`), so each fragment carries 1/P of every shard.

Topology (how replicas map to nodes or sites). Ranks are numbered r = rep·S + sh and a topology puts ranks
on nodes in order, so a replica occupies S contiguous ranks. With S = ranks per node each replica is one
node: the sharding collectives stay on the intra-node links and the sync crosses nodes only — the default
placement of hybrid sharding (e.g. 8 ranks on 'multinode_2x4', S = 4: replicas {0..3} and {4..7}, counterpart
groups {0,4}, {1,5}, {2,6}, {3,7}). S < ranks per node puts several replicas in a node (their sync partly
intra-node); S > ranks per node spreads a replica over nodes (its sharding collectives cross nodes); on
'wan_sites' (one rank per site) every replica spans S sites. Bytes per link class per step are predicted by
`lab.sharding.composed.predict_bytes` (analytic, no training), which the Ledger matches.

Knobs read (declared by `lab.sharding.zero.ZeRO`): `sharding_degree` (0 or 1 = no sharding: the technique's
own path, unchanged; S = num_workers is one replica: nothing crosses replicas, no compressor), and, when
S > 1, `zero_stage`, `zeropp` (qwz, hpz; not qgz, which reduces over all ranks), `hpz_size` (0 = the gcd of
the ranks per node and S: the secondary copy stays in the replica), `quant_block`. Not with S > 1: DDP's
`overlap` buckets, compressors fitted to the whole model (powersgd, fedzip, 3sfc), the parameter-server
algorithm, federated star topologies.

Exactness: with H = 1 and no compression, DDP composed with any S equals DDP up to the order of the sums
(ZeRO's E0/E1); Local SGD at H = 1 with plain SGD equals DDP up to float rounding (parameter vs gradient
averaging). [RECON] Where the fragments of Streaming DiLoCo sit under sharding is this lab's choice.
"""
from __future__ import annotations

import torch

from lab.knobs import bad
from lab.sharding.options import check_composed, degree
from lab.sharding.step import ShardedStep, tensor_bytes
from lab.technique import Technique, TrainContext

#: the sharding knobs a composed technique reads (declared by lab.sharding.zero.ZeRO)
SHARDING_FIELDS = ("sharding_degree", "zero_stage", "zeropp", "hpz_size", "quant_block")


class Sharded(Technique):
    """Mixin of the sync techniques that compose with sharding: with `sharding_degree` S > 1 their steps are
    `ShardedStep`s and what they sync is each rank's shard; with S = 1 everything is the technique's own."""

    reads = SHARDING_FIELDS
    #: attributes holding the technique's own sync state (e.g. Local SGD's anchor), counted in `memory['sync']`
    sync_state: tuple = ()
    sharded: ShardedStep | None = None

    @classmethod
    def check(cls, c) -> None:
        check_composed(c, bad)
        super().check(c)

    @classmethod
    def describe(cls, config) -> str:
        text = super().describe(config)
        s = degree(config)
        if s > 1:
            text += f" S={s} ZeRO-{config.zero_stage}" + ("" if config.zeropp == "none" else f" {config.zeropp}")
        return text

    def setup(self, ctx: TrainContext) -> None:
        if degree(self.config) > 1:
            self.sharded = ShardedStep(self.config, ctx)
        super().setup(ctx)

    # ---- the model rows this rank owns and syncs ----------------------------------------------------------
    def rows(self, ctx: TrainContext) -> torch.Tensor:
        """What this process's ranks sync: their parameters (n, d), or with sharding their shards (n, c)."""
        return ctx.cluster.params.detach() if self.sharded is None else self.sharded.master.detach()

    def consensus(self, ctx: TrainContext) -> torch.Tensor:
        """A copy of the model every rank starts from: (d,), or with sharding each rank's shard of it (n, c)."""
        return ctx.cluster.params.detach()[0].clone() if self.sharded is None else self.sharded.master.detach().clone()

    def set_rows(self, ctx: TrainContext, value: torch.Tensor) -> None:
        """Every rank's model becomes `value` ((d,) or (n, d); with sharding its shard (n, c)); the replicas
        then re-gather their full parameters (stages 1–2: one all-gather in the shard group)."""
        if self.sharded is None:
            ctx.cluster.set_rows(value)
            return
        sh = self.sharded
        with torch.no_grad():
            sh.master.copy_(value.expand_as(sh.master))
        sh.stale = sh.stage in (1, 2)
        sh.gather(ctx)

    def write_part(self, ctx: TrainContext, idx: torch.Tensor, value: torch.Tensor) -> None:
        """Positions `idx` of every rank's synced rows (its parameters, or its shard) become `value` (n, |idx|);
        with sharding the full parameters are re-gathered at the next `refresh`."""
        with torch.no_grad():
            if self.sharded is None:
                ctx.cluster.params[:, idx] = value
            else:
                self.sharded.master[:, idx] = value
                self.sharded.stale = self.sharded.stage in (1, 2)

    def full(self, ctx: TrainContext, row: torch.Tensor) -> torch.Tensor:
        """A synced vector as a whole model (d,): itself, or with sharding its shards gathered (not recorded)."""
        return row if self.sharded is None else self.sharded.gather_rows(ctx, row)[0]

    # ---- steps and the exchange -------------------------------------------------------------------------
    def inner_step(self, ctx: TrainContext, *, gather: bool = True) -> torch.Tensor:
        """One local step of every rank (a sharded step inside each replica); losses (n,). gather=False defers
        the replicas' all-gather to `set_rows` / `refresh` (the caller changes the shards first)."""
        return ctx.local_step() if self.sharded is None else self.sharded.step(ctx, gather=gather)

    def refresh(self, ctx: TrainContext) -> None:
        """Re-gather the replicas' full parameters if their shards changed since (nothing without sharding)."""
        if self.sharded is not None:
            self.sharded.gather(ctx)

    def local_steps(self, ctx: TrainContext, h: int) -> torch.Tensor:
        if self.sharded is None:
            return super().local_steps(ctx, h)
        return torch.stack([self.sharded.step(ctx, gather=i < h - 1) for i in range(h)])  # the sync gathers last

    def average(self, ctx: TrainContext, rows: torch.Tensor, *, tag: str, reference=None, channel=None,
                segments=None) -> torch.Tensor:
        if self.sharded is None:
            return super().average(ctx, rows, tag=tag, reference=reference, channel=channel, segments=segments)
        channel = self.channel if channel is None else channel
        return self.sharded.exchange_mean(ctx, rows, tag=tag, channel=channel, segments=segments)  # (n, c)

    def round(self, ctx: TrainContext):
        result = super().round(ctx)
        if self.sharded is not None:
            self.refresh(ctx)
            result.extras.update(self.sharding_columns())
        return result

    def sharding_columns(self) -> dict:
        lay = self.sharded.layout
        return {"sharding_degree": lay.sharding_degree, "replication_degree": lay.replication_degree}

    # ---- views ----------------------------------------------------------------------------------------------
    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        if self.sharded is None:
            return super().model_row(ctx)
        return ctx.mean_over_ranks(self.sharded.full_rows(ctx))

    @property
    def memory(self) -> dict[str, int]:
        """Bytes per rank by category: the sharded step's (`lab.sharding.memory.lab_memory` predicts them) and
        'sync', the technique's own sync state (e.g. Local SGD's anchor: its shard)."""
        if self.sharded is None:
            return {}
        n = self.sharded.master.shape[0]
        state = [getattr(self, a, None) for a in self.sync_state]
        return {**self.sharded.memory, "sync": tensor_bytes(*[t for t in state if torch.is_tensor(t)]) // n}

    def state_dict(self) -> dict:
        out = super().state_dict()
        return out if self.sharded is None else {**out, "sharded": self.sharded.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.sharded is not None:
            self.sharded.load_state_dict(state["sharded"])
