"""Pipeline MoE (PPMoE): experts inside a tensor-parallel group, index slicing and one all-reduce instead of
two all-to-alls.

Paper: Chen et al., "Pipeline MoE: A Flexible MoE Implementation with Pipeline
Parallelism" (arXiv 2304.11414; abstract level, spec §B14). The ranks of a
tensor-parallel group (here: the ranks of one node, `tp_size` of them) hold
the same token activations, because TP splits the backbone's weights, not its
tokens. So no token has to travel: each rank slices out the (token, choice)
pairs routed to its local experts (E/tp_size of them), computes them, scatters
the gated outputs into a zero (T, h) buffer, and one all-reduce inside the
group sums every rank's share. Pipeline parallelism would scale the backbone
across nodes (not modelled here: every TP group is a data-parallel replica).

In the lab the backbone is replicated within a group rather than split (the
numbers are the same; a real TP backbone splits its matmuls), and the group's
ranks draw the same batches (the technique feeds them one stream per group).
Autograd follows Megatron's pair of operators: the tokens and gates enter the
expert region through `f` (identity forward, all-reduce of the gradient
backward) and leave through `g` (all-reduce forward, identity backward).

What is sent per MoE layer and rank: forward all-reduce of T·h values inside
the group, backward all-reduce of the token and gate gradients T·(h + k), all
intra-node; expert gradients are all-reduced across the groups that replicate
the experts (`expert_grads`). Versus EP: zero inter-node MoE bytes.
Exactness (E1): equals the single-device MoE on the group's tokens.
"""
from __future__ import annotations

import torch

from lab.data import RankBatches, partition
from lab.knobs import Knob, bad
from lab.moe.ep import ExpertParallelTraining
from lab.moe.layer import expert_ffn
from lab.moe.strategies import Strategy


class _AllReduceForward(torch.autograd.Function):
    """g: sum inside the groups forward, identity backward."""

    @staticmethod
    def forward(ctx, x, coll, groups, tag):
        return coll.all_reduce(x, op="sum", tag=tag, groups=groups).to(x.dtype).clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class _AllReduceBackward(torch.autograd.Function):
    """f: identity forward, sum of the gradient inside the groups backward."""

    @staticmethod
    def forward(ctx, x, coll, groups, tag):
        ctx.coll, ctx.groups, ctx.tag = coll, groups, tag
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.coll.all_reduce(grad.contiguous(), op="sum", tag=ctx.tag, groups=ctx.groups).to(grad.dtype), \
            None, None, None


def tp_groups(world_size: int, tp_size: int) -> list[list[int]]:
    return [list(range(g * tp_size, (g + 1) * tp_size)) for g in range(world_size // tp_size)]


class PPMoE(Strategy):
    """Rank r holds experts (r mod tp)·E/tp .. of every layer; groups of `tp_size` consecutive ranks."""

    name = "ppmoe"

    def __init__(self, coll, shape, *, tp_size: int):
        super().__init__(coll, shape)
        p, e = coll.world_size, shape.num_experts
        if tp_size < 1 or p % tp_size:
            raise ValueError(f"tp_size={tp_size!r} is invalid: expected a divisor of the {p} ranks")
        if e % tp_size:
            raise ValueError(f"num_experts={e!r} is invalid: expected a multiple of the tensor-parallel group "
                             f"size {tp_size} (PPMoE puts E/tp experts on every rank of a group)")
        self.tp = tp_size
        self.per = e // tp_size
        self.groups = tp_groups(p, tp_size) if tp_size < p else None
        self.replicas = [[g * tp_size + j for g in range(p // tp_size)] for j in range(tp_size)]

    def experts_of(self, rank: int) -> list[int]:
        j = rank % self.tp
        return list(range(j * self.per, (j + 1) * self.per))

    def init_rows(self, experts):
        return torch.stack([self._flat(experts, torch.tensor(self.experts_of(r))) for r in self.coll.ranks])

    def layer(self, rows, l, tokens, routing, *, tag):
        w1, w2 = self._split(rows, self.per)[l]
        x = _AllReduceBackward.apply(tokens, self.coll, self.groups, f"{tag}_tokens_bwd")
        gate = _AllReduceBackward.apply(routing.gate, self.coll, self.groups, f"{tag}_gates_bwd")
        # zeros that are in the graph: a rank with nothing to compute still joins f's backward all-reduce
        partial = x * 0 + gate.sum() * 0 + (w1.sum() + w2.sum()) * 0
        load = []
        for i, rank in enumerate(self.coll.ranks):
            mine = self.experts_of(rank)
            rows_i = 0
            for s, e in enumerate(mine):
                t, c = ((routing.expert[i] == e) & routing.keep[i]).nonzero(as_tuple=True)  # index slicing
                if len(t):
                    out = gate[i, t, c].unsqueeze(-1) * expert_ffn(x[i, t], w1[i, s], w2[i, s])
                    partial = partial.index_put((torch.full_like(t, i), t), out, accumulate=True)
                    rows_i += len(t)
            load.append(rows_i)
        self.load_history.append(self.coll.all_gather(torch.tensor(load).view(-1, 1), record=False)[0, :, 0].numpy())
        return _AllReduceForward.apply(partial, self.coll, self.groups, f"{tag}_combine")

    def sync_grads(self, grad):
        """Each expert is replicated across the P/tp groups; every group counted its loss tp times."""
        if self.groups is None:  # one group: no replicas
            return grad * self.tp
        summed = self.coll.all_reduce(grad, op="sum", tag="expert_grads", groups=self.replicas)
        return summed * self.tp

    def full_experts(self, rows):
        every = self.coll.all_gather(rows.detach(), record=False)[0][: self.tp]  # group 0's ranks
        per = self._split(every, self.per)
        return [(w1.flatten(0, 1), w2.flatten(0, 1)) for w1, w2 in per]


class GroupBatches:
    """One batch stream per tensor-parallel group, repeated for each of the group's local ranks."""

    def __init__(self, streams: RankBatches, groups: list[int]):
        self.streams, self.groups = streams, groups
        self.index = torch.tensor([streams.ranks.index(g) for g in groups])

    def next(self):
        x, y = self.streams.next()  # (groups held here, B, ...)
        return x[self.index], y[self.index]

    def state_dict(self) -> dict:
        return self.streams.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.streams.load_state_dict(state)


class PPMoETraining(ExpertParallelTraining):
    """PPMoE on the MoE model: groups of `tp_size` ranks see the same batches; the dense gradients are
    all-reduced across the groups (ranks at the same position), the experts' across the groups too."""

    name = "ppmoe"
    label = "PPMoE"
    label_knobs = ("tp_size",)
    knobs = {"tp_size": Knob(0, "ppmoe: ranks per tensor-parallel group holding the experts (0 = ranks per node)",
                             low=0, high=4096)}

    @classmethod
    def check_layout(cls, config) -> None:
        from lab.topology import preset

        tp = config.tp_size or preset(config.topology, config.num_workers).ranks_per_node
        if config.num_workers % tp:
            bad("tp_size", config.tp_size, f"a divisor of num_workers={config.num_workers} (0 = ranks per node)")
        if config.num_experts % tp:
            bad("num_experts", config.num_experts, f"a multiple of the tensor-parallel group size {tp}")

    def make_strategy(self, ctx):
        self.tp = self.config.tp_size or ctx.topology.ranks_per_node
        return PPMoE(ctx.collective, self.shape, tp_size=self.tp)

    def setup(self, ctx):
        super().setup(ctx)
        c, p = self.config, ctx.collective.world_size
        groups = p // self.tp
        data = ctx.data
        shards = partition(data.num_train, data.labels, scheme=c.partition, num_workers=groups, seed=c.seed,
                           alpha=c.dirichlet_alpha, shards_per_worker=c.shards_per_worker,
                           examples_per_worker=c.examples_per_worker)
        ctx.batches = GroupBatches(RankBatches(data.x_train, data.y_train, shards, batch_size=c.batch_size,
                                               seed=c.seed, ranks=sorted({r // self.tp for r in ctx.collective.ranks})),
                                   [r // self.tp for r in ctx.collective.ranks])

    def sync_dense(self, ctx, grad):
        """Every rank of a group holds the group's full gradient: sum over the groups, times tp (lab: the
        backbone is replicated in a group; a split one would all-reduce 1/tp of it)."""
        if self.strategy.groups is None:
            return grad * self.tp
        return ctx.collective.all_reduce(grad, op="sum", tag="dense_grads", groups=self.strategy.replicas) * self.tp
