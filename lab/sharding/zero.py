"""ZeRO stages 1–3 with hybrid sharding (S × R) and ZeRO++ (qwZ, hpZ, qgZ), over the Collective.

Papers: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models" (SC'20); Zhao et al., "PyTorch FSDP" (VLDB'23) for hybrid
sharding; Wang et al., "ZeRO++" (arXiv 2306.10209). Spec:
shared/techniques/sharding_and_topology.md §A1–§A3.

Idea. Data parallelism where a copy of the model state is split S ways (a
*shard group* of S contiguous ranks) and replicated R = P/S times. Rank r owns
the contiguous slice `shard_index(r)` of the flat parameter vector (padded to a
multiple of S) and keeps the optimizer state (and, from stage 2, the gradient;
at stage 3, the parameters) only for that slice.

What is sent per step (one unit = the whole flat model; Ψ parameters, fp32):
- stages 1, 2: reduce-scatter of the gradient in the shard group (tag `grads`),
  all-reduce of the gradient slice across replicas when R > 1 (`grads_replicas`),
  all-gather of the updated slices in the shard group (`params`): (S−1)/S·4Ψ
  each way, the same bytes as DDP's all-reduce when S = P.
- stage 3: all-gather for the forward (`params_fwd`), again for the backward
  (`params_bwd`), reduce-scatter of the gradient: 1.5× DDP when S = P. The
  forward runs without keeping activations and the backward recomputes it from
  the re-gathered parameters (ZeRO-3 with full activation recomputation).
- ZeRO++ (stage 3, `zeropp`): `qwz` sends the forward gather as block-wise int8
  with fp32 scales (lab.compress.quantize.IntQuantizer); `hpz` keeps a
  secondary slice of the parameters per hpZ group of H ranks (default: one
  node) and gathers the backward inside it only; `qgz` replaces the gradient
  reduce-scatter by the 2-hop int4 all-to-all of lab.sharding.hierarchy.
- hierarchical gradient reduction (S = P, `reduce_levels`): 'node' is ZeRO++'s
  2-hop schedule (in the node, then across nodes), 'die+node' the Frontier
  scheme's 3 hops (the GPU's dies, the node's GPUs, the nodes; with
  `hpz_size` = dies per GPU or ranks per node for the secondary copy's level,
  lab.sharding.frontier); int4 at every hop with qgz.

Knobs (ExperimentConfig): `zero_stage` (1, 2, 3), `sharding_degree` S (0 = all
ranks; S < P is hybrid sharding, S = 1 is DDP), `zeropp` ('none' or a '+'-joined
subset of qwz, hpz, qgz), `hpz_size` H (0 = ranks per node), `quant_block`,
`reduce_levels` ('flat', 'node', 'die+node'), `dies_per_gpu`.

Exactness: with the same optimizer, parameters equal DDP's up to the order of
the gradient sums (E0/E1); qwZ and qgZ are lossy by design (E2).

`memory` holds, after every step, the bytes per rank of the tensors this
technique holds when the optimizer has stepped (params, grads, optimizer, buffers),
counted from the tensors themselves; `lab.sharding.memory` predicts them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lab.compress.quantize import IntQuantizer
from lab.knobs import Knob, bad
from lab.sharding.adam_mini import split_blocks as split_blocks_of
from lab.sharding.hierarchy import hierarchical_reduce_scatter
from lab.sharding.layout import ShardLayout
from lab.sharding.options import parse_zeropp
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class ZeRO(Technique):
    name = "zero"
    label = "ZeRO"
    reads = LOCAL_OPTIMIZER
    label_knobs = ("zero_stage", "sharding_degree")
    knobs = {
        "zero_stage": Knob(3, "model states sharded: 1 optimizer states, 2 + gradients, 3 + parameters", choices=(1, 2, 3)),
        "sharding_degree": Knob(0, "ranks sharing one copy of the model state, S (0 = all workers; a divisor of num_workers; S < num_workers replicates it R = num_workers/S times)", low=0, high=100_000),
        "zeropp": Knob("none", "zero stage 3: ZeRO++ options, 'none' or a '+'-joined subset of qwz (int8 weight gather), hpz (node-local secondary weights), qgz (int4 2-hop gradient reduction)"),
        "hpz_size": Knob(0, "ranks per secondary-partition group (0 = ranks per node)", low=0, high=100_000, read_when=lambda c: "hpz" in c.zeropp, why="only zeropp with 'hpz' reads it"),
        "quant_block": Knob(256, "values per fp32 scale in block-wise quantization", low=1, high=2**24, read_when=lambda c: "qwz" in c.zeropp or "qgz" in c.zeropp, why="only zeropp with 'qwz' or 'qgz' reads it"),
        "reduce_levels": Knob("flat", "zero (sharding_degree = all): gradient reduction: one reduce-scatter, or hierarchical all-to-alls by node (ZeRO++'s 2 hops) or by die, GPU and node (Frontier's 3)", choices=("flat", "node", "die+node")),
        "dies_per_gpu": Knob(2, "ranks per GPU (a divisor of the ranks per node)", low=1, high=1024, read_when=lambda c: c.reduce_levels == "die+node", why="only reduce_levels='die+node' reads it"),
    }

    @classmethod
    def check(cls, c) -> None:
        from lab.sharding import options

        options.check(c, bad)

    def setup(self, ctx: TrainContext) -> None:
        c, coll = self.config, ctx.collective
        p = coll.world_size
        self.stage = c.zero_stage
        self.flags = parse_zeropp(c.zeropp)
        hpz = (c.hpz_size or ctx.topology.ranks_per_node) if "hpz" in self.flags else 0
        self.layout = ShardLayout(p, c.sharding_degree or p, hpz)
        lay = self.layout
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

        self.coll = coll
        self.optimizer = make_optimizer(c, self.master, cluster=ctx.cluster, layout=self)
        ctx.optimizer = self.optimizer
        self.grad_full = torch.zeros(coll.num_local, self.d_pad) if self.stage == 1 else None  # stage 1 keeps it
        self.secondary = None  # (n, d_pad / H): hpZ's slice, refreshed at every forward gather
        self.memory: dict[str, int] = {}

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

    def adam_mini_slices(self, bounds: torch.Tensor) -> dict:
        """What `AdamMini` needs to step on this rank's slices: where each row's slice starts, which blocks
        the slice boundaries split, and the all-reduce that sums their partial sums in the shard group."""
        s = self.layout.sharding_degree
        lo = [self.slice_bounds(r)[0] for r in self.coll.ranks]

        def reduce(part):  # (n, #split) partial sums of g² -> their sums over the shard group
            return self.coll.all_reduce(part, op="sum", tag="adam_mini", groups=self.shard_groups)

        return {"lo": lo, "reduce": reduce if s > 1 else None,
                "split": split_blocks_of(bounds, [k * self.c for k in range(1, s)])}

    # ---- communication -------------------------------------------------------------------------------
    def _gather_params(self, ctx: TrainContext, tag: str, *, quantize: bool) -> torch.Tensor:
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

    def _gather_secondary(self, ctx: TrainContext, tag: str) -> torch.Tensor:
        """hpZ: all-gather the secondary slices inside the hpZ group -> (n, d_pad)."""
        got = ctx.collective.all_gather(self.secondary, tag=tag, groups=self.layout.hpz_groups())
        return got.reshape(self.secondary.shape[0], self.d_pad)

    def _reduce_grads(self, ctx: TrainContext, grads: torch.Tensor) -> torch.Tensor:
        """(n, d_pad) full gradients -> (n, c) this rank's slice of their mean over all P ranks."""
        coll, lay = ctx.collective, self.layout
        sizes = self.reduce_sizes(ctx)
        if sizes is not None:
            quant = (self.grad_quant,) * len(sizes) if self.grad_quant is not None else None
            g = hierarchical_reduce_scatter(coll, grads, sizes=sizes, quantizers=quant, tag="grads")
        elif lay.sharding_degree > 1:
            g = coll.reduce_scatter(grads, op="mean", tag="grads", groups=self.shard_groups)
        else:
            g = grads
        if lay.replication_degree > 1:
            g = coll.all_reduce(g, op="mean", tag="grads_replicas", groups=self.replica_groups)
        return g.contiguous()

    def reduce_sizes(self, ctx: TrainContext) -> tuple[int, ...] | None:
        """Level sizes of the hierarchical gradient reduction, or None for one reduce-scatter."""
        levels = self.config.reduce_levels
        if levels == "flat" and self.grad_quant is None:
            return None
        d, nodes = ctx.topology.ranks_per_node, ctx.topology.num_nodes
        if levels == "die+node":
            g1 = self.config.dies_per_gpu
            return (g1, d // g1, nodes)
        return (d, nodes)

    def _clip(self, ctx: TrainContext, g: torch.Tensor) -> None:
        """Clip by the norm of the whole averaged gradient: the slices' squared norms are summed in the shard group."""
        sq = (g.double() ** 2).sum(dim=1, keepdim=True)  # (n, 1)
        if self.layout.sharding_degree > 1:
            sq = ctx.collective.all_reduce(sq, op="sum", tag="grad_norm", groups=self.shard_groups)
        scale = (self.config.grad_clip / (sq.sqrt().float() + 1e-6)).clamp(max=1.0)
        g.mul_(scale)

    # ---- one step ----------------------------------------------------------------------------------
    def round(self, ctx: TrainContext) -> RoundResult:
        cl = ctx.cluster
        ctx.ledger.step = ctx.step
        for group in self.optimizer.param_groups:
            group["lr"] = ctx.lr_now()
        x, y = ctx.batches.next()
        if self.stage == 3:
            losses, grads = self._stage3_forward_backward(ctx, x, y)
        else:
            losses, grads = cl.loss_and_grad(cl.params, x, y)
        # compute before the gradient's messages (the clock's order); stage 3 recomputes its forward: + 1/3
        ctx.compute_seconds += ctx.step_compute_seconds * (4 / 3 if self.stage == 3 else 1)
        grads = self._pad(grads)  # (n, d_pad)
        if self.grad_full is not None:  # stage 1: the full gradient buffer persists
            self.grad_full.copy_(grads)
            grads = self.grad_full
        shard_grad = self._reduce_grads(ctx, grads)  # (n, c)
        del grads
        if self.config.grad_clip:
            self._clip(ctx, shard_grad)
        self.master.grad = shard_grad
        del shard_grad  # the optimizer's .grad is the only reference: zero_grad frees it
        self.optimizer.step()
        self.memory = self.memory_snapshot(ctx)  # everything is alive here: the step's peak
        self.optimizer.zero_grad(set_to_none=True)
        if self.stage in (1, 2):
            with torch.no_grad():
                cl.params.copy_(self._gather_params(ctx, "params", quantize=False)[:, :self.d])
        ctx.step += 1
        lay = self.layout
        return RoundResult(ctx.collective.mean_metric(losses),
                           {"sharding_degree": lay.sharding_degree, "replication_degree": lay.replication_degree})

    def _stage3_forward_backward(self, ctx: TrainContext, x, y):
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
    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        """The current model (d,). Stage 3 gathers the slices (not recorded: an observer's view) into the
        cluster's parameter buffer; stages 1–2 hold full, identical parameters on every rank already."""
        if self.stage == 3:
            got = ctx.collective.all_gather(self.master.detach(), record=False, groups=self.shard_groups)
            with torch.no_grad():
                ctx.cluster.params.copy_(got.reshape(self.master.shape[0], self.d_pad)[:, :self.d])
        return ctx.cluster.params[0].detach().clone()

    def memory_snapshot(self, ctx: TrainContext) -> dict[str, int]:
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
