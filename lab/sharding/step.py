"""One sharded training step inside a replica: ZeRO stages 1–3 (and ZeRO++) over a shard group of S ranks.

The one implementation of sharded data parallelism in the lab. `lab.sharding.zero.ZeRO` runs it with a dense
all-reduce of every rank's gradient slice across replicas at every step; the sync techniques that compose with
sharding (`lab.sync.sharded`: DDP, Local SGD, QSR, DiLoCo, Streaming DiLoCo) run their inner steps through it
and exchange each rank's shard with its counterparts in the other replicas, every step or every H steps,
through their compressor.

Layout (`lab.sharding.layout`): ranks r = rep·S + sh. A **replica** is one shard group, S contiguous ranks
holding one copy of the model state split S ways; rank r owns the contiguous slice `sh` of the flat parameter
vector, padded to d_pad (c = d_pad / S values). The **counterparts** of r are the R = P/S ranks with the same
shard index (`ShardLayout.replica_groups`, stride S). A replica's step averages the gradients of its S ranks'
batches: it trains like one data-parallel worker with S times the batch.

One step (`step`):
1. stage 3: all-gather the slices in the shard group for the forward (`params_fwd`, int8 with ZeRO++ qwZ),
   forward without keeping activations, gather again for the backward (`params_bwd`; inside the hpZ group with
   hpZ) and recompute; stages 1–2: forward and backward on the full parameters every rank holds;
2. reduce-scatter the gradient in the shard group (`grads`): each rank gets its slice of the replica's mean
   (or, over all ranks, the hierarchical all-to-all reduction of qgZ / `reduce_levels`);
3. `exchange(slice) -> slice`: what crosses replicas at every step (ZeRO, DDP: the mean over the counterparts,
   `exchange_mean`); nothing for local steps;
4. clip by the norm of the whole (averaged) gradient, summed over the shard group; optimizer step on the slice;
5. stages 1–2: all-gather the updated slices in the shard group (`params`). `gather=False` defers it to
   `gather`, for a caller that changes the slices first (a sync), so every step still gathers once.

`memory` holds, after every step, the bytes per rank of the tensors held when the optimizer has stepped
(params, grads, optimizer, buffers), counted from the tensors; `lab.sharding.memory.lab_memory` predicts them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lab.compress.exchange import clip_segments
from lab.compress.quantize import IntQuantizer
from lab.sharding.adam_mini import split_blocks as split_blocks_of
from lab.sharding.hierarchy import hierarchical_reduce_scatter
from lab.sharding.layout import ShardLayout
from lab.sharding.options import degree, hpz_size_of, parse_zeropp


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class ShardedStep:
    """S-way sharded steps of the ranks this process holds (config: zero_stage, sharding_degree, zeropp,
    hpz_size, quant_block, reduce_levels, dies_per_gpu, the local optimizer's knobs)."""

    def __init__(self, config, ctx):
        c, coll = config, ctx.collective
        p = coll.world_size
        self.config, self.coll = c, coll
        self.stage = c.zero_stage
        self.flags = parse_zeropp(c.zeropp)
        self.layout = lay = ShardLayout(p, degree(c), hpz_size_of(c, ctx.topology))
        self.d = ctx.cluster.dim
        self.d_pad = lay.padded(self.d)
        self.c = self.d_pad // lay.sharding_degree
        self.rows = torch.arange(coll.num_local)
        self.shard_idx = torch.tensor([lay.shard_index(r) for r in coll.ranks])
        self.shard_groups, self.replica_groups = lay.shard_groups(), lay.replica_groups()
        self.quant = IntQuantizer(bits=8, block=c.quant_block) if "qwz" in self.flags else None
        self.grad_quant = IntQuantizer(bits=4, block=c.quant_block) if "qgz" in self.flags else None
        full = self._pad(ctx.cluster.params.detach())  # (n, d_pad)
        self.master = self._my_slice(full, lay.sharding_degree).clone()  # (n, c): the optimizer's slice
        from lab.optim import make_optimizer

        self.optimizer = make_optimizer(c, self.master, cluster=ctx.cluster, layout=self)
        ctx.optimizer = self.optimizer
        self.grad_full = torch.zeros(coll.num_local, self.d_pad) if self.stage == 1 else None  # stage 1 keeps it
        self.secondary = None  # (n, d_pad / H): hpZ's slice, refreshed at every forward gather
        self.stale = False  # stages 1-2: the slices changed since the full parameters were gathered
        self.memory: dict[str, int] = {}

    @property
    def replication_degree(self) -> int:
        return self.layout.replication_degree

    # ---- layout helpers ----------------------------------------------------------------------------
    def _pad(self, t: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d_pad)
        return t if t.shape[1] == self.d_pad else F.pad(t, (0, self.d_pad - t.shape[1]))

    def _my_slice(self, full: torch.Tensor, parts: int, index: torch.Tensor | None = None) -> torch.Tensor:
        """(n, d_pad) -> (n, d_pad / parts): row i's slice number index[i] (default: its shard index)."""
        index = self.shard_idx if index is None else index
        return full.view(full.shape[0], parts, -1)[self.rows, index]

    def slice_bounds(self, rank: int) -> tuple[int, int]:
        """[lo, hi) of the padded flat vector that `rank` owns."""
        lo = self.layout.shard_index(rank) * self.c
        return lo, lo + self.c

    def segments(self, numels, lo: int = 0, hi: int | None = None) -> list[tuple[int, ...]]:
        """For each replica group (shard index sh), the parameter-tensor lengths inside [lo, hi) of shard sh
        (padding as one more part): the layout of what the counterparts exchange, for per-layer compression."""
        hi = self.c if hi is None else hi
        return [clip_segments(numels, sh * self.c + lo, sh * self.c + hi) for sh in range(self.layout.sharding_degree)]

    def adam_mini_slices(self, bounds: torch.Tensor) -> dict:
        """What `AdamMini` needs to step on this rank's slices: where each row's slice starts, which blocks
        the slice boundaries split, and the all-reduce that sums their partial sums in the shard group."""
        s = self.layout.sharding_degree
        lo = [self.slice_bounds(r)[0] for r in self.coll.ranks]

        def reduce(part):  # (n, #split) partial sums of g² -> their sums over the shard group
            return self.coll.all_reduce(part, op="sum", tag="adam_mini", groups=self.shard_groups)

        return {"lo": lo, "reduce": reduce if s > 1 else None,
                "split": split_blocks_of(bounds, [k * self.c for k in range(1, s)])}

    # ---- communication inside the replica -------------------------------------------------------------
    def _gather_params(self, ctx, tag: str, *, quantize: bool) -> torch.Tensor:
        """All-gather the primary slices in the shard group -> (n, d_pad) (dequantized if `quantize`)."""
        n, s = self.master.shape[0], self.layout.sharding_degree
        if s == 1:
            return self.master.detach()
        if quantize:
            got = ctx.collective.all_gather(self.quant.compress(self.master.detach()), tag=tag,
                                            groups=self.shard_groups)  # tensors (n, S, ...)
            flat = got.map(lambda t: t.reshape(n * s, *t.shape[2:]))
            return self.quant.decompress(flat).view(n, self.d_pad)
        got = ctx.collective.all_gather(self.master.detach(), tag=tag, groups=self.shard_groups)  # (n, S, c)
        return got.reshape(n, self.d_pad)

    def _gather_secondary(self, ctx, tag: str) -> torch.Tensor:
        """hpZ: all-gather the secondary slices inside the hpZ group -> (n, d_pad)."""
        got = ctx.collective.all_gather(self.secondary, tag=tag, groups=self.layout.hpz_groups())
        return got.reshape(self.secondary.shape[0], self.d_pad)

    def _reduce_grads(self, ctx, grads: torch.Tensor) -> torch.Tensor:
        """(n, d_pad) full gradients -> (n, c) this rank's slice of their mean over the shard group (over all
        P ranks for the hierarchical reduction)."""
        sizes = self.reduce_sizes(ctx)
        if sizes is not None:
            quant = (self.grad_quant,) * len(sizes) if self.grad_quant is not None else None
            return hierarchical_reduce_scatter(ctx.collective, grads, sizes=sizes, quantizers=quant, tag="grads")
        if self.layout.sharding_degree > 1:
            return ctx.collective.reduce_scatter(grads, op="mean", tag="grads", groups=self.shard_groups)
        return grads

    def reduce_sizes(self, ctx) -> tuple[int, ...] | None:
        """Level sizes of the hierarchical gradient reduction, or None for one reduce-scatter."""
        levels = self.config.reduce_levels
        if levels == "flat" and self.grad_quant is None:
            return None
        d, nodes = ctx.topology.ranks_per_node, ctx.topology.num_nodes
        if levels == "die+node":
            g1 = self.config.dies_per_gpu
            return (g1, d // g1, nodes)
        return (d, nodes)

    def _clip(self, ctx, g: torch.Tensor) -> None:
        """Clip by the norm of the whole averaged gradient: the slices' squared norms are summed in the shard group."""
        sq = (g.double() ** 2).sum(dim=1, keepdim=True)  # (n, 1)
        if self.layout.sharding_degree > 1:
            sq = ctx.collective.all_reduce(sq, op="sum", tag="grad_norm", groups=self.shard_groups)
        scale = (self.config.grad_clip / (sq.sqrt().float() + 1e-6)).clamp(max=1.0)
        g.mul_(scale)

    # ---- across replicas -------------------------------------------------------------------------------
    def exchange_mean(self, ctx, rows: torch.Tensor, *, tag: str, channel=None, segments=None) -> torch.Tensor:
        """The mean of `rows` (n, w) — each rank's shard, or a part of it — over its counterparts in the other
        replicas: a dense fp32 all-reduce in the replica groups, or `channel`'s compressed all-reduce in them
        (error feedback per rank; `segments`: the per-layer layout of the part in each replica group, default
        the whole shard's). Nothing is sent with one replica."""
        if self.layout.replication_degree == 1:
            return rows
        if channel is None or channel.dense:
            return ctx.collective.all_reduce(rows, op="mean", tag=tag, groups=self.replica_groups)
        segments = self.segments(ctx.cluster.numels) if segments is None else segments
        return channel.all_reduce_mean(rows, ctx.collective, tag=tag, groups=self.replica_groups, segments=segments)

    def replica_mean(self, ctx, g: torch.Tensor) -> torch.Tensor:
        """ZeRO's step exchange: the gradient slice averaged over the replicas (`grads_replicas`)."""
        return self.exchange_mean(ctx, g, tag="grads_replicas")

    # ---- one step ----------------------------------------------------------------------------------
    def step(self, ctx, *, exchange=None, gather: bool = True) -> torch.Tensor:
        """One optimizer step on every local rank, each on its own next batch; returns losses (n,)."""
        ctx.check_stop()
        cl = ctx.cluster
        ctx.ledger.step = ctx.step
        for group in self.optimizer.param_groups:
            group["lr"] = ctx.lr_now()
        x, y = ctx.batches.next()
        if self.stage == 3:
            losses, grads = self._stage3_forward_backward(ctx, x, y)
        else:
            losses, grads = cl.loss_and_grad(cl.params, x, y)
        ctx.guard("loss", losses)
        ctx.guard("gradient", grads)
        # compute before the gradient's messages (the clock's order); stage 3 recomputes its forward: + 1/3
        ctx.compute_seconds += ctx.step_compute_seconds * (4 / 3 if self.stage == 3 else 1)
        grads = self._pad(grads)  # (n, d_pad)
        if self.grad_full is not None:  # stage 1: the full gradient buffer persists
            self.grad_full.copy_(grads)
            grads = self.grad_full
        shard_grad = self._reduce_grads(ctx, grads)  # (n, c)
        del grads
        if exchange is not None:
            shard_grad = exchange(shard_grad)
        shard_grad = shard_grad.contiguous()
        if self.config.grad_clip:
            self._clip(ctx, shard_grad)
        self.master.grad = shard_grad
        del shard_grad  # the optimizer's .grad is the only reference: zero_grad frees it
        self.optimizer.step()
        self.memory = self.memory_snapshot(ctx)  # everything is alive here: the step's peak
        self.optimizer.zero_grad(set_to_none=True)
        self.stale = self.stage in (1, 2)
        if gather:
            self.gather(ctx)
        ctx.step += 1
        return losses

    def gather(self, ctx, tag: str = "params") -> None:
        """Stages 1-2: all-gather the updated slices into the full parameters (stage 3 gathers at the forward)."""
        if self.stale:
            with torch.no_grad():
                ctx.cluster.params.copy_(self._gather_params(ctx, tag, quantize=False)[:, :self.d])
            self.stale = False

    def _stage3_forward_backward(self, ctx, x, y):
        cl = ctx.cluster
        full = self._gather_params(ctx, "params_fwd", quantize=self.quant is not None)  # (n, d_pad)
        if self.layout.hpz_size:  # keep this rank's slice of its hpZ group while the full weights are here
            idx = torch.tensor([self.layout.hpz_index(r) for r in ctx.collective.ranks])
            self.secondary = self._my_slice(full, self.layout.hpz_size, idx).clone()
        with torch.no_grad():
            cl.params.copy_(full[:, :self.d])
            del full
            losses = cl.losses(cl.params, x, y)  # forward only: activations are not kept
        if self.layout.hpz_size:
            full = self._gather_secondary(ctx, "params_bwd")
        else:
            full = self._gather_params(ctx, "params_bwd", quantize=self.quant is not None)
        with torch.no_grad():
            cl.params.copy_(full[:, :self.d])
            del full
        _, grads = cl.loss_and_grad(cl.params, x, y)  # backward recomputes the forward
        return losses, grads

    # ---- views -----------------------------------------------------------------------------------------
    def gather_rows(self, ctx, rows: torch.Tensor) -> torch.Tensor:
        """(n, c) slices -> (n, d): each replica's full vector, gathered in the shard group (not recorded: an
        observer's view)."""
        got = ctx.collective.all_gather(rows.detach(), record=False, groups=self.shard_groups)  # (n, S, c)
        return got.reshape(rows.shape[0], self.d_pad)[:, :self.d]

    def full_rows(self, ctx) -> torch.Tensor:
        """Every local rank's replica's current model (n, d). Stage 3 gathers the slices (not recorded) into the
        cluster's parameter buffer; stages 1–2 hold the full parameters already."""
        if self.stage == 3:
            with torch.no_grad():
                ctx.cluster.params.copy_(self.gather_rows(ctx, self.master))
        return ctx.cluster.params.detach()

    def memory_snapshot(self, ctx) -> dict[str, int]:
        """Bytes per rank of what this rank holds right after the optimizer step, before gradients are
        released, by category (scalar optimizer step counters are left out)."""
        n = self.master.shape[0]
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() >= 1]
        params = ctx.cluster.params
        if self.stage == 3:
            out = {"params": tensor_bytes(self.master), "grads": tensor_bytes(self.master.grad),
                   "optimizer": tensor_bytes(*state), "buffers": tensor_bytes(params, self.secondary)}
        else:
            out = {"params": tensor_bytes(params), "grads": tensor_bytes(self.grad_full, self.master.grad),
                   "optimizer": tensor_bytes(self.master, *state), "buffers": 0}
        return {k: v // n for k, v in out.items()}

    def state_dict(self) -> dict:
        return {"master": self.master.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.master.copy_(state["master"])
        self.optimizer.load_state_dict(state["optimizer"])
