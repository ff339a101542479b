"""DIMAT: decentralized agents that train locally, then merge with their graph neighbours after aligning
neurons by activation matching.

Paper: Saadati et al., "DIMAT: Decentralized Iterative Merging-And-Training for
Deep Learning Models", CVPR 2024 (spec §A9; round [CODE] from nsaadati/DIMAT;
table numbers [UNVERIFIED]).

Idea: two networks trained from different initialisations compute the same
features in a different order of hidden units, so averaging their weights
mixes unrelated units. Before merging, each agent permutes every neighbour's
hidden units to best match its own: on a batch of *its own* data it computes
the correlation between its units' activations and the neighbour's, and solves
the assignment problem (Hungarian algorithm, maximising total correlation).

Round (every `sync_period` H local steps; agents start from independent random
initialisations, as after DIMAT's separate pre-training):

    every agent i: H local steps of the configured optimizer on its own data
    receive the models of its neighbours (ring: left and right; full: everyone)
    for each neighbour j: P_j = argmax_P Σ_a corr(act_i[:, a], act_j[:, P(a)])  on i's data
    θ_i ← Σ_j π_ij · P_j(θ_j)      (π: ring 1/3 each, full 1/N; P_i = identity)

The official code computes the activation statistics on the full training set;
the lab uses each agent's own partition (the privacy-faithful choice the spec
asks for). `dimat_matching='none'` is the weight-averaging (WA) baseline.
Alignment permutes the hidden units of the lab's `mlp` (fc1 rows and bias,
fc2 columns); residual networks would need permutations tied across blocks,
which the lab does not implement.

Sent per round: each agent sends its model to each neighbour — ring: 2 × 4d
bytes per agent (two ring shifts), full: an all-gather, (N−1) × 4d. Knobs:
`sync_period` (H), `dimat_graph`, `dimat_matching`, the optimizer settings.
The evaluated model is agent 0's; the metrics column `agent_accuracy` is the
mean test accuracy over all agents' models.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from lab.knobs import Knob, bad
from scipy.optimize import linear_sum_assignment

from lab.technique import LOCAL_OPTIMIZER, RoundResult, Technique, TrainContext

MATCH_EXAMPLES = 256  # examples of the agent's own data used for activation statistics


def hidden(params: dict, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden pre-activations (M, H) for inputs x (M, d_in): before the ReLU, since units that
    never fire on the batch would all look alike after it."""
    return x @ params["fc1.weight"].T + params["fc1.bias"]


def match_units(own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Permutation perm (H,) so that unit perm[a] of `other` best matches unit a of `own` (activations (M, H))."""
    def standardize(a):
        return (a - a.mean(0)) / (a.std(0) + 1e-8)

    corr = standardize(own).T @ standardize(other) / own.shape[0]  # (H, H)
    rows, cols = linear_sum_assignment(corr.double().numpy(), maximize=True)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def permute(params: dict, perm: torch.Tensor) -> dict:
    """The same network with its hidden units reordered: new unit a is old unit perm[a]."""
    out = dict(params)
    out["fc1.weight"], out["fc1.bias"] = params["fc1.weight"][perm], params["fc1.bias"][perm]
    out["fc2.weight"] = params["fc2.weight"][:, perm]
    return out


def merge(cluster, own: torch.Tensor, others: list[torch.Tensor], weights: list[float], x: torch.Tensor, *,
          align: bool) -> torch.Tensor:
    """θ = w_0·own + Σ_j w_j·P_j(other_j) as a flat row (d,); P_j from activation matching on x, or identity."""
    mine = cluster.unflatten(own)
    act = hidden(mine, x) if align else None
    out = weights[0] * own
    for w, other in zip(weights[1:], others):
        if align:
            p = cluster.unflatten(other)
            q = permute(p, match_units(act, hidden(p, x)))
            other = torch.cat([q[name].reshape(-1) for name in cluster.names])
        out = out + w * other
    return out


class DIMAT(Technique):
    name = "dimat"
    label = "DIMAT"
    reads = LOCAL_OPTIMIZER + ("sync_period",)
    label_knobs = ("sync_period",)
    knobs = {
        "dimat_matching": Knob("activation", "align neighbours' neurons before merging, or plain averaging", choices=("activation", "none")),
        "dimat_graph": Knob("ring", "agents' communication graph", choices=("ring", "full")),
    }

    @classmethod
    def check(cls, c) -> None:
        if c.model != "mlp":
            bad("model", c.model, "'mlp' for technique='dimat' (its neuron alignment permutes the MLP's hidden units)")

    def setup(self, ctx: TrainContext) -> None:
        c, cl = self.config, ctx.cluster
        if set(cl.names) != {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}:
            raise ValueError(f"model={c.model!r} is invalid for technique='dimat': expected 'mlp'")
        for row, r in enumerate(cl.ranks):  # independent initialisations, one per agent
            m = copy.deepcopy(cl.model)
            with torch.random.fork_rng():
                torch.manual_seed(c.seed * 1_000 + 1 + r)
                for mod in m.modules():
                    if hasattr(mod, "reset_parameters"):
                        mod.reset_parameters()
            cl.set_rows(torch.cat([p.detach().reshape(-1) for p in m.parameters()]), [row])

    def neighbours(self, ctx: TrainContext) -> tuple[torch.Tensor, list[float]]:
        """Every local agent's neighbours' rows (n, k, d) and the mixing weights [own, neighbours...]."""
        x = ctx.cluster.params.detach()
        n = ctx.collective.world_size
        if self.config.dimat_graph == "ring" and n > 2:
            left = ctx.collective.shift(x, offset=1, tag="models")  # from rank r - 1
            right = ctx.collective.shift(x, offset=-1, tag="models")  # from rank r + 1
            return torch.stack([left, right], dim=1), [1 / 3] * 3
        everyone = ctx.collective.all_gather(x, tag="models")  # (n, P, d)
        idx = [[j for j in range(n) if j != r] for r in ctx.cluster.ranks]
        return torch.stack([everyone[i, idx[i]] for i in range(len(idx))]), [1 / n] * n

    def round(self, ctx: TrainContext) -> RoundResult:
        c, cl = self.config, ctx.cluster
        h = min(c.sync_period, c.steps - ctx.step)
        losses = torch.stack([ctx.local_step() for _ in range(h)])  # (h, n)
        nb, weights = self.neighbours(ctx) if ctx.collective.world_size > 1 else (None, None)
        if nb is not None:
            merged = []
            for row, r in enumerate(cl.ranks):
                shard = ctx.batches.shards[r][:MATCH_EXAMPLES]
                merged.append(merge(cl, cl.params.detach()[row], list(nb[row]), weights, ctx.batches.x[shard],
                                    align=c.dimat_matching == "activation"))
            cl.set_rows(torch.stack(merged))
        return RoundResult(ctx.collective.mean_metric(losses.mean(0)), {"agent_accuracy": self.agent_accuracy(ctx)})

    def agent_accuracy(self, ctx: TrainContext) -> float:
        """Mean test accuracy over all agents' own models (observer view, not sent)."""
        if ctx.data is None or ctx.data.kind != "classification":
            return float("nan")
        acc = torch.tensor([[float((ctx.cluster.evaluate(row, ctx.data.x_test).argmax(-1) == ctx.data.y_test)
                                   .float().mean())] for row in ctx.cluster.params.detach()], dtype=torch.float64)
        return ctx.collective.mean_metric(acc[:, 0])

    def model_row(self, ctx: TrainContext) -> torch.Tensor:
        """Agent 0's model (averaging unaligned agents would not be a model anyone holds)."""
        return ctx.collective.all_gather(ctx.cluster.params.detach(), record=False)[0][0]
