"""`sequence_parallel`: train the tiny GPT with each sequence split over the ranks of an SP group.

The workers form num_workers / sp_degree SP groups of `sp_degree` consecutive ranks. Every step, each
group draws its own batch of sequences (one stream per group, so a group sees exactly what a single
device training on the same data would); rank i of the group holds tokens of position set i of the
`sp_layout` (contiguous, or zigzag for causal load balance) and runs the model on them, its attention
layers talking to the rest of the group with `sp_method` (`lab.sequence.gpt`, `lab.sequence.attention`).
Then the weight gradients — each rank's covers its own tokens' share of the loss — are summed over the
SP group and averaged over the groups: one all-reduce over every rank, or, for `sp_method='lss'`, LSS
Transformer's double gradient averaging (an all-reduce inside the SP group, then one across groups).

What is sent per step and rank: per layer, the method's attention traffic forward and backward (see each
method's module: Ring/Burst/TokenRing point-to-point hops, Ulysses/USP all-to-alls, LSS an all-gather and
a reduce-scatter), then the gradient all-reduce of d fp32 values.

Exactness: with one SP group the loss and every step equal single-device training on the same sequences
(`ddp` with one worker) up to fp32 association (tests/test_sequence_gpt.py).

Knobs: `sp_degree` (0 = all workers), `sp_method`, `sp_layout`, and the local optimizer. Metric
columns: `sp_bytes` (cumulative bytes of the attention exchanges, all ranks).
"""
from __future__ import annotations

import inspect

import torch

from lab.data import RankBatches, load_chars, partition
from lab.knobs import Knob, bad
from lab.models import TinyGPT
from lab.sequence.gpt import sp_gradients, sp_losses, sp_plan
from lab.sequence.layout import LAYOUTS, shard, sp_groups
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext

#: the softmax-attention methods the GPT can use (LASP is linear attention, Star Attention inference, DSP 2-D)
GPT_METHODS = ("ring", "token_ring", "ulysses", "usp", "burst", "lss")
_BLOCK = inspect.signature(load_chars).parameters["block_size"].default
_HEADS = inspect.signature(TinyGPT).parameters["n_head"].default


class SequenceParallel(Technique):
    name = "sequence_parallel"
    label = "Sequence parallel"
    reads = LOCAL_OPTIMIZER
    label_knobs = ("sp_method", "sp_degree")
    knobs = {
        "sp_degree": Knob(0, "ranks that split each sequence, G (0 = all workers; a divisor of num_workers; "
                          "num_workers / G SP groups train data-parallel)", low=1, high=100_000, special=(0,)),
        "sp_method": Knob("ring", "sequence-parallel attention: ring (Ring Attention), token_ring, ulysses "
                          "(DeepSpeed-Ulysses), usp (Ulysses in a node x ring across), burst (BurstAttention), "
                          "lss (LSS Transformer)", choices=GPT_METHODS),
        "sp_layout": Knob("contiguous", "which tokens a rank holds: contiguous blocks, or zigzag (chunks i and "
                          "2G-1-i: equal causal work per rank)", choices=LAYOUTS),
    }

    @staticmethod
    def degree(config) -> int:
        return config.sp_degree or config.num_workers

    @classmethod
    def check(cls, config) -> None:
        if config.model != "gpt" or config.dataset != "chars":
            bad("model", config.model, "'gpt' on dataset='chars' for technique='sequence_parallel' (it splits "
                "the GPT's context)")
        g = cls.degree(config)
        if config.num_workers % g:
            bad("sp_degree", config.sp_degree, f"a divisor of num_workers={config.num_workers} (or 0 for all)")
        parts = g * (2 if config.sp_layout == "zigzag" else 1)
        if _BLOCK % parts:
            bad("sp_degree", config.sp_degree, f"a degree whose {'2x' if parts > g else ''}split divides the "
                f"{_BLOCK}-token context with sp_layout={config.sp_layout!r}")
        if config.sp_method == "ulysses" and _HEADS % g:
            bad("sp_degree", config.sp_degree, f"a divisor of the GPT's {_HEADS} heads for sp_method='ulysses'")
        if config.sp_method == "usp":
            from lab.topology import preset

            u = min(preset(config.topology, config.num_workers).ranks_per_node, g)
            if g % u or _HEADS % u:
                bad("sp_degree", config.sp_degree, f"a multiple of the {u} ranks per node whose Ulysses part "
                    f"divides the GPT's {_HEADS} heads for sp_method='usp' on topology={config.topology!r}")

    def setup(self, ctx: TrainContext) -> None:
        c = self.config
        g = self.degree(c)
        self.groups = sp_groups(c.num_workers, g)
        self.plan = sp_plan(ctx.collective, method=c.sp_method, layout=c.sp_layout, groups=self.groups)
        data = ctx.data
        num_groups = c.num_workers // g
        shards = partition(data.num_train, None, scheme="iid", num_workers=num_groups, seed=c.seed,
                           examples_per_worker=c.examples_per_worker)
        self.mine = [r // g for r in ctx.collective.ranks]  # each local rank's SP group
        self.batches = RankBatches(data.x_train, data.y_train, shards, batch_size=c.batch_size, seed=c.seed,
                                   ranks=sorted(set(self.mine)))
        self.where = [r % g for r in ctx.collective.ranks]  # position in the group
        self.pos = shard(torch.arange(data.x_train.shape[1]), g, c.sp_layout, dim=0)[self.where]  # (n, C)
        self.sp_bytes = 0

    def round(self, ctx: TrainContext) -> RoundResult:
        c = self.config
        ctx.ledger.step = ctx.step
        for group in ctx.optimizer.param_groups:
            group["lr"] = ctx.lr_now()
        groups_here = sorted(set(self.mine))
        x, y = self.batches.next(groups_here)  # (groups here, B, T)
        rows = [groups_here.index(j) for j in self.mine]
        g = len(self.groups[0])
        xs = torch.stack([shard(x[j], g, c.sp_layout, dim=-1)[i] for j, i in zip(rows, self.where)])  # (n, B, C)
        ys = torch.stack([shard(y[j], g, c.sp_layout, dim=-1)[i] for j, i in zip(rows, self.where)])
        before = ctx.ledger.total_bytes
        shares = sp_losses(ctx.cluster, ctx.cluster.params, xs, ys, self.pos, plan=self.plan, method=c.sp_method,
                           group_tokens=x.shape[1] * x.shape[2])  # (n,)
        shares.sum().backward()
        self.sp_bytes += ctx.ledger.total_bytes - before
        ctx.compute_seconds += ctx.topology.compute_seconds(ctx.spec.flops_per_example * c.batch_size / g)
        grads = sp_gradients(ctx.collective, ctx.cluster.params.grad, groups=self.groups,
                             double_averaging=c.sp_method == "lss")
        ctx.cluster.params.grad = grads
        if c.grad_clip:
            ctx.cluster.clip_grad_norm_(c.grad_clip)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        loss = ctx.collective.mean_metric(shares.detach()) * g  # mean over SP groups of each group's loss
        return RoundResult(loss, {"sp_bytes": self.sp_bytes})

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict(), "sp_bytes": self.sp_bytes}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.sp_bytes = state["sp_bytes"]
