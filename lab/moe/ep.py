"""Training an MoE model with expert parallelism (EP) for the experts and DDP for everything else.

Spec §B10 (expert parallelism), with the model of `lab.moe.model` (a character
GPT for `model='gpt'` on 'chars', or a classifier for `model='mlp'` on digits,
whose feed-forward layers are MoE). Each step every rank:

1. runs the forward on its own batch; in every MoE layer it routes its tokens
   (top-k gating, capacity, load-balancing loss: lab.moe.router), dispatches
   each kept (token, choice) to the rank holding its expert, runs its own
   experts, and combines the results (lab.moe.layer.ExpertParallel);
2. back-propagates loss_r / P with loss = cross-entropy + aux_loss_coef ·
   Σ_layers aux; the backward repeats both all-to-alls;
3. all-reduces the dense gradients (sum; `dense_grads`), keeps its experts'
   gradients (they already hold every rank's tokens' contributions), steps its
   optimizer.

What is sent per step and rank: per MoE layer a counts all-gather (P·S int64),
dispatch and combine all_to_all_v forward and backward, each about
(P−1)/P·k·T·h·4 bytes balanced (T = tokens per rank); once, the dense gradient
all-reduce. Metrics columns: `aux_loss`, `dropped_fraction` (assignments past
capacity), `load_imbalance` (max over ranks of rows computed / mean, averaged
over layers), `moe_bytes` (cumulative bytes of the MoE exchanges).

Subclasses change where the experts live (`make_strategy`): `moe_dp`
replicates them (data-parallel MoE), LocMoE (lab.moe.locmoe) biases routing to
the node, ScMoE (lab.moe.scmoe) adds the shortcut and overlap, PPMoE
(lab.moe.ppmoe_technique) and FSSDP (lab.moe.fssdp_technique).

Knobs: `num_experts`, `top_k`, `capacity_factor` (0 = dropless),
`aux_loss_coef`, `moe_layers`, `moe_hidden`, `moe_ffn`, and the local optimizer.
Exactness: the model trained with EP equals the same model trained with
replicated experts (`moe_dp`) up to summation order (tests/test_moe_training.py).
"""
from __future__ import annotations

import numpy as np
import torch

from lab.knobs import Knob, bad
from lab.moe.model import DenseLayout, MoEShape, forward, init_model, task_loss
from lab.moe.strategies import ExpertParallelExperts, Replicated
from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext


def moe_shape(config, data) -> MoEShape:
    """The MoE model a config trains on a dataset."""
    if config.model == "gpt":
        return MoEShape("gpt", data.num_classes, data.num_classes, block_size=data.meta["block_size"],
                        hidden=config.moe_hidden, heads=4, num_layers=config.moe_layers, ffn=config.moe_ffn,
                        num_experts=config.num_experts, top_k=config.top_k, capacity_factor=config.capacity_factor)
    return MoEShape("mlp", data.x_train.shape[1], data.num_classes, hidden=config.moe_hidden, heads=1,
                    num_layers=config.moe_layers, ffn=config.moe_ffn, num_experts=config.num_experts,
                    top_k=config.top_k, capacity_factor=config.capacity_factor)


class MoECluster:
    """The rank-stacked MoE workers as the training loop sees a cluster: `params` (n, d) flat rows (dense
    then this rank's experts) and `evaluate(row, x)` of a full model row (dense then every expert)."""

    def __init__(self, shape: MoEShape, layout: DenseLayout, params: torch.Tensor, ranks: list[int]):
        self.shape, self.layout, self.params, self.ranks = shape, layout, params, ranks

    @property
    def dim(self) -> int:
        return self.params.shape[1]

    @property
    def num_local(self) -> int:
        return len(self.ranks)

    def evaluate(self, row: torch.Tensor, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Outputs of the full model `row` (dense, then every layer's W1, W2) on x (M, ...), single device."""
        from lab.moe.layer import reference
        from lab.moe.model import full_experts

        dense, experts = full_experts(self.shape, row)
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out, _, _ = forward(self.shape, dense, x[i:i + batch_size].unsqueeze(0),
                                    lambda l, t, r: reference(t, r, *experts[l]))
                outs.append(out[0])
        return torch.cat(outs)


class ExpertParallelTraining(Technique):
    name = "moe_ep"
    label = "MoE EP"
    reads = LOCAL_OPTIMIZER
    label_knobs = ("num_experts", "top_k")
    knobs = {
        "num_experts": Knob(8, "MoE techniques: experts per MoE layer E (a multiple of the ranks for expert "
                            "parallelism)", low=1, high=1024),
        "top_k": Knob(2, "MoE techniques: experts each token is routed to (1..num_experts)", low=1, high=64),
        "capacity_factor": Knob(0.0, "MoE techniques: expert capacity C = factor·k·T/E tokens per rank and expert; "
                                "0 = dropless", low=0.0, high=64.0),
        "aux_loss_coef": Knob(0.01, "MoE techniques: weight of the load-balancing loss", low=0.0, high=100.0),
        "moe_layers": Knob(2, "MoE techniques: transformer blocks, each with an MoE feed-forward", low=1, high=64),
        "moe_hidden": Knob(32, "MoE techniques: hidden size h of the MoE model", low=4, high=4096),
        "moe_ffn": Knob(64, "MoE techniques: hidden size f of every expert", low=1, high=16384),
    }

    @classmethod
    def check(cls, config) -> None:
        if config.model not in ("gpt", "mlp"):
            bad("model", config.model, "'gpt' (on 'chars') or 'mlp' (on 'digits') for an MoE technique")
        if config.top_k > config.num_experts:
            bad("top_k", config.top_k, f"at most num_experts={config.num_experts}")
        if config.optimizer == "adam_mini":
            bad("optimizer", config.optimizer, "'sgd' or 'adamw' for MoE techniques")
        if config.model == "gpt" and config.moe_hidden % 4:
            bad("moe_hidden", config.moe_hidden, "a multiple of the GPT's 4 heads")
        cls.check_layout(config)

    @classmethod
    def check_layout(cls, config) -> None:
        if config.num_experts % config.num_workers:
            bad("num_experts", config.num_experts, f"a multiple of num_workers={config.num_workers} (expert "
                "parallelism holds E/P experts per rank)")

    # ---- set-up -------------------------------------------------------------------------------------
    def make_strategy(self, ctx: TrainContext):
        return ExpertParallelExperts(ctx.collective, self.shape)

    def model_shape(self, ctx: TrainContext) -> MoEShape:
        return moe_shape(self.config, ctx.data)

    def setup(self, ctx: TrainContext) -> None:
        from lab.optim import make_optimizer

        self.shape = self.model_shape(ctx)
        self.strategy = self.make_strategy(ctx)
        dense, experts = init_model(self.shape, seed=self.config.seed)
        self.layout = DenseLayout(self.shape.dense_shapes())
        n = ctx.collective.num_local
        rows = torch.cat([self.layout.flatten(dense).unsqueeze(0).repeat(n, 1), self.strategy.init_rows(experts)], 1)
        self.params = rows.contiguous().requires_grad_(True)  # (n, d_dense + d_experts)
        ctx.cluster = MoECluster(self.shape, self.layout, self.params, ctx.collective.ranks)
        ctx.optimizer = make_optimizer(self.config, self.params, cluster=None)
        self.moe_bytes = 0
        self.flops = self.shape.forward_flops_per_token()

    # ---- one step -----------------------------------------------------------------------------------
    def forward(self, ctx: TrainContext, x: torch.Tensor, *, hooks=None):
        d = self.layout.dim
        dense = self.layout.unflatten(self.params[:, :d])
        experts = self.params[:, d:]
        return forward(self.shape, dense, x, lambda l, t, r: self.strategy.layer(experts, l, t, r, tag=f"moe{l}"),
                       bias=self.strategy.bias, hooks=hooks)

    def tokens_per_rank(self, x: torch.Tensor) -> int:
        return int(x.shape[1] * (x.shape[2] if self.shape.kind == "gpt" else 1))

    def round(self, ctx: TrainContext) -> RoundResult:
        c, coll = self.config, ctx.collective
        ctx.ledger.step = ctx.step
        for group in ctx.optimizer.param_groups:
            group["lr"] = ctx.lr_now()
        x, y = ctx.batches.next()
        before = len(ctx.ledger.entries)
        self.strategy.load_history.clear()
        tokens = self.tokens_per_rank(x)
        fwd = sum(self.flops.values()) * tokens
        logits, aux, routings = self.forward(ctx, x, hooks=self.forward_hooks(ctx, tokens))
        losses = task_loss(logits, y)  # (n,)
        ((losses + c.aux_loss_coef * aux + self.extra_loss(routings)).sum() / coll.world_size).backward()
        ctx.compute_seconds += ctx.topology.compute_seconds(3 * fwd) - self._counted
        d = self.layout.dim
        grad = self.params.grad
        dense = self.sync_dense(ctx, grad[:, :d].contiguous())
        experts = self.strategy.sync_grads(grad[:, d:].contiguous())
        self.params.grad = torch.cat([dense.to(grad.dtype), experts.to(grad.dtype)], 1)
        if c.grad_clip:
            norms = self.params.grad.norm(dim=1, keepdim=True)
            self.params.grad = self.params.grad * (c.grad_clip / (norms + 1e-6)).clamp(max=1.0)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        new = ctx.ledger.entries[before:]
        self.moe_bytes += sum(e.total_bytes for e in new if e.tag.startswith("moe"))
        self.after_step(ctx, new)
        return RoundResult(coll.mean_metric(losses), self.extras(ctx, aux, routings, tokens))

    def extra_loss(self, routings) -> torch.Tensor | float:
        """(n,) further loss terms of a variant (LocMoE's locality loss); 0 here."""
        return 0.0

    def sync_dense(self, ctx: TrainContext, grad: torch.Tensor) -> torch.Tensor:
        """DDP: the dense gradients summed over ranks (each rank back-propagated loss_r / P)."""
        return ctx.collective.all_reduce(grad, op="sum", tag="dense_grads")

    def forward_hooks(self, ctx: TrainContext, tokens: int):
        """Forward compute on the clock layer by layer (attention before the MoE exchange of its layer)."""
        self._counted = 0.0
        per_layer = (self.flops["attention"] + self.flops["router"]) / self.shape.num_layers * tokens

        def after_attention(l):
            sec = ctx.topology.compute_seconds(per_layer)
            ctx.compute_seconds += sec
            self._counted += sec
        return {"after_attention": after_attention}

    def after_step(self, ctx: TrainContext, entries) -> None:
        """Subclasses account overlap here (ScMoE)."""

    def extras(self, ctx: TrainContext, aux, routings, tokens: int) -> dict:
        coll = ctx.collective
        dropped = sum(r.dropped.double() for r in routings) / (len(routings) * tokens * self.shape.top_k)  # (n,)
        loads = [np.asarray(h, dtype=float) for h in self.strategy.load_history]
        imbalance = float(np.mean([h.max() / max(h.mean(), 1e-12) for h in loads])) if loads else 1.0
        return {"aux_loss": coll.mean_metric(aux.detach()),
                "dropped_fraction": coll.mean_metric(dropped),
                "load_imbalance": imbalance, "max_load": float(max(h.max() for h in loads)) if loads else 0.0,
                "moe_bytes": self.moe_bytes}

    # ---- evaluation ---------------------------------------------------------------------------------
    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        """Dense: the mean over ranks (equal under DDP); experts: every layer's, gathered (an observer)."""
        d = self.layout.dim
        dense = ctx.mean_over_ranks(self.params[:, :d])
        experts = self.strategy.full_experts(self.params[:, d:])
        return torch.cat([dense] + [torch.cat([w1.flatten(1), w2.flatten(1)], 1).reshape(-1) for w1, w2 in experts])

    def state_dict(self) -> dict:
        return {"moe_bytes": self.moe_bytes}

    def load_state_dict(self, state: dict) -> None:
        self.moe_bytes = state["moe_bytes"]


class ReplicatedTraining(ExpertParallelTraining):
    """Data-parallel MoE: every rank holds every expert; expert gradients are all-reduced like the dense ones.
    The baseline EP is compared with, and the single-device MoE when P = 1."""

    name = "moe_dp"
    label = "MoE DP"

    @classmethod
    def check_layout(cls, config) -> None:
        pass

    def make_strategy(self, ctx):
        return Replicated(ctx.collective, self.shape)
