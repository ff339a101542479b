"""DIMAT: decentralized agents that merge with their graph neighbours after aligning units by activation
matching, then train locally; repeat.

Paper: Saadati et al., "DIMAT: Decentralized Iterative Merging-And-Training for
Deep Learning Models", CVPR 2024 (spec §A9; round [CODE] from nsaadati/DIMAT;
table numbers [UNVERIFIED]).

Idea: two networks trained from different initialisations compute the same
features in a different order of hidden units, so averaging their weights
mixes unrelated units. Before merging, each agent permutes every neighbour's
hidden units to best match its own: on a batch of *its own* data it computes
the correlation between its units' activations and the neighbour's, and solves
the assignment problem (Hungarian algorithm, maximising total correlation).

Round (the authors' order: merge, then train):

    receive the models of its neighbours (ring: left and right; full: everyone)
    for each neighbour j, for each hidden layer: P_j = argmax_P Σ_a corr(act_i[:, a], act_j[:, P(a)])  on i's data
    θ_i ← Σ_j π_ij · P_j(θ_j)      (π: ring 1/3 each, full 1/N; P_i = identity)
    every agent i: H = `sync_period` local steps of the configured optimizer on its own data

Agents start from independently pre-trained models, as DIMAT merges agents that
were pre-trained first: with `pretrained` (lab.pretrain; 'auto' does) agent r
starts from the backbone pre-trained with its own seed (seed + 1,000,003·r) on
the pre-training part (digits 0–4) and fine-tunes on the other (5–9);
otherwise from independent random initialisations.

Permutations are tied through each hidden layer: a layer's units are its
producer's output rows (weight, bias), any normalisation's per-unit parameters,
and its consumer's input columns.
- `mlp`: the hidden units of fc1 (fc1 rows and bias, fc2 columns); activations
  before the ReLU (units that never fire would all look alike after it).
- `cnn`: the channels of each conv (conv weight rows and bias, GroupNorm weight
  and bias, the next conv's input channels or the head's columns); activations
  are the GroupNorm outputs, one sample per position (M·h·w, C). GroupNorm
  normalises each group of channels with the group's own statistics, so moving
  a channel to another group changes the function; a permutation preserves it
  exactly when it maps every group onto a group. The matching therefore solves
  the assignment within each pair of groups, then assigns groups to groups by
  those optima — the best group-preserving permutation.

The official code computes the activation statistics on the full training set;
the lab uses each agent's own partition (the privacy-faithful choice the spec
asks for). `dimat_matching='none'` is the weight-averaging (WA) baseline.

Sent per round: each agent sends its model to each neighbour — ring: 2 × 4d
bytes per agent (two ring shifts), full: an all-gather, (N−1) × 4d. Knobs:
`sync_period` (H), `dimat_graph`, `dimat_matching`, the optimizer settings,
`pretrained`. The evaluated model is agent 0's; the metrics column
`agent_accuracy` is the mean test accuracy over all agents' models.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.func import functional_call

from lab import pretrain
from lab.knobs import Knob, bad
from lab.sync.periodic import PeriodicSync
from lab.technique import TrainContext

MATCH_EXAMPLES = 256  # examples of the agent's own data used for activation statistics


@dataclass(frozen=True)
class Layer:
    """One hidden layer's units: where to read their activations, and the parameters they index."""

    act: str  # the module whose output is the layer's activation
    rows: tuple[str, ...]  # parameters indexed by the unit along dim 0
    cols: tuple[str, ...]  # parameters indexed by the unit along dim 1 (the consumer)
    groups: int = 1  # GroupNorm groups tying the units (1: none)


LAYERS = {
    "mlp": (Layer("fc1", ("fc1.weight", "fc1.bias"), ("fc2.weight",)),),
    "cnn": (Layer("gn1", ("conv1.weight", "conv1.bias", "gn1.weight", "gn1.bias"), ("conv2.weight",), groups=4),
            Layer("gn2", ("conv2.weight", "conv2.bias", "gn2.weight", "gn2.bias"), ("head.weight",), groups=4)),
}


def layers_of(cluster) -> tuple[Layer, ...]:
    """The alignable layers of the cluster's model (ValueError for models DIMAT cannot align)."""
    for name, layers in LAYERS.items():
        if set(cluster.names) == {p for layer in layers for p in layer.rows + layer.cols} | _heads(name):
            return layers
    raise ValueError(f"technique='dimat' cannot align this model's units (parameters {cluster.names}); allowed "
                     f"models: {list(LAYERS)}")


def _heads(model: str) -> set[str]:
    return {"fc2.bias"} if model == "mlp" else {"head.bias"}


def activations(cluster, params: dict, x: torch.Tensor, layers) -> list[torch.Tensor]:
    """Each layer's activations (M, units) for inputs x, read by forward hooks on the model."""
    out, handles = {}, []
    modules = dict(cluster.model.named_modules())
    for layer in layers:
        handles.append(modules[layer.act].register_forward_hook(
            lambda mod, inp, res, key=layer.act: out.__setitem__(key, res.detach())))
    try:
        with torch.no_grad():
            functional_call(cluster.model, (params, cluster.buffers), (x,))
    finally:
        for h in handles:
            h.remove()
    acts = []
    for layer in layers:
        a = out[layer.act]
        acts.append(a.movedim(1, -1).reshape(-1, a.shape[1]) if a.dim() > 2 else a)  # (M·h·w, C) for conv maps
    return acts


def _assign(score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maximum-score assignment of a square score matrix: (cols (n,) for rows 0..n−1, total score)."""
    rows, cols = linear_sum_assignment(score.double().numpy(), maximize=True)
    cols = cols[np.argsort(rows)]
    return torch.as_tensor(cols, dtype=torch.long), float(score.double().numpy()[np.arange(len(cols)), cols].sum())


def match_units(own: torch.Tensor, other: torch.Tensor, *, groups: int = 1) -> torch.Tensor:
    """Permutation perm (H,) so that unit perm[a] of `other` best matches unit a of `own` (activations (M, H)),
    over the permutations that map each of `groups` contiguous groups onto a group."""
    def standardize(a):
        return (a - a.mean(0)) / (a.std(0) + 1e-8)

    corr = standardize(own).T @ standardize(other) / own.shape[0]  # (H, H)
    if groups == 1:
        return _assign(corr)[0]
    g = corr.shape[0] // groups
    block = {}  # (own group, other group) -> (within-group assignment, its score)
    score = torch.zeros(groups, groups, dtype=torch.float64)
    for i in range(groups):
        for j in range(groups):
            block[i, j] = _assign(corr[i * g:(i + 1) * g, j * g:(j + 1) * g])
            score[i, j] = block[i, j][1]
    to_group = _assign(score)[0]
    return torch.cat([j * g + block[i, j][0] for i, j in enumerate(to_group.tolist())])


def permute(params: dict, layer: Layer, perm: torch.Tensor) -> dict:
    """The same network with one layer's units reordered: new unit a is old unit perm[a]."""
    out = dict(params)
    for name in layer.rows:
        out[name] = params[name][perm]
    for name in layer.cols:
        out[name] = params[name][:, perm]
    return out


def align(cluster, own: dict, other: dict, x: torch.Tensor, layers) -> dict:
    """`other` with every layer's units permuted to match `own`'s on inputs x. A layer's matching does not
    depend on the others' (permuting a layer's units and its consumer's inputs together leaves the next
    layer's activations unchanged), so all layers are matched on the unpermuted models."""
    acts_own, acts_other = activations(cluster, own, x, layers), activations(cluster, other, x, layers)
    for layer, a, b in zip(layers, acts_own, acts_other):
        other = permute(other, layer, match_units(a, b, groups=layer.groups))
    return other


def merge(cluster, own: torch.Tensor, others: list[torch.Tensor], weights: list[float], x: torch.Tensor, *,
          align_units: bool) -> torch.Tensor:
    """θ = w_0·own + Σ_j w_j·P_j(other_j) as a flat row (d,); P_j from activation matching on x, or identity."""
    layers = layers_of(cluster) if align_units else ()
    mine = cluster.unflatten(own)
    out = weights[0] * own
    for w, other in zip(weights[1:], others):
        if align_units:
            q = align(cluster, mine, cluster.unflatten(other), x, layers)
            other = torch.cat([q[name].reshape(-1) for name in cluster.names])
        out = out + w * other
    return out


def agent_seed(seed: int, agent: int) -> int:
    """The seed of agent `agent`'s own initialisation and pre-training (agent 0: the run's seed, whose backbone
    the run loads anyway)."""
    return seed + 1_000_003 * agent


class DIMAT(PeriodicSync):
    name = "dimat"
    label = "DIMAT"
    sync_first = True  # the authors' order: merge, then train (the round is lab.sync.periodic's)
    knobs = {
        "dimat_matching": Knob("activation", "align neighbours' neurons before merging, or plain averaging",
                               choices=("activation", "none")),
        "dimat_graph": Knob("ring", "agents' communication graph", choices=("ring", "full")),
    }
    #: DIMAT merges agents that were pre-trained first: with pretrained='auto' they start from backbones
    pretrained_backbone = True

    @classmethod
    def check(cls, c) -> None:
        if c.model not in LAYERS:
            bad("model", c.model, f"one of {list(LAYERS)} for technique='dimat' (the models whose hidden units its "
                "alignment permutes)")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        c, cl = self.config, ctx.cluster
        layers_of(cl)
        backbone = pretrain.uses_backbone(c, type(self))
        for row, r in enumerate(cl.ranks):  # independently pre-trained (or initialised) agents
            seed = agent_seed(c.seed, r)
            if backbone:
                cl.set_rows(pretrain.flat(cl.model, pretrain.backbone(c, seed=seed)), [row])
                continue
            m = copy.deepcopy(cl.model)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
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

    def sync(self, ctx: TrainContext) -> dict:
        """Merge with the aligned neighbours (before the round's local steps)."""
        c, cl = self.config, ctx.cluster
        if ctx.collective.world_size > 1:
            nb, weights = self.neighbours(ctx)
            merged = []
            for row, r in enumerate(cl.ranks):
                shard = ctx.batches.shards[r][:MATCH_EXAMPLES]
                merged.append(merge(cl, cl.params.detach()[row], list(nb[row]), weights, ctx.batches.x[shard],
                                    align_units=c.dimat_matching == "activation"))
            cl.set_rows(torch.stack(merged))
        return {}

    def observe(self, ctx: TrainContext) -> dict:
        return {"agent_accuracy": self.agent_accuracy(ctx)}

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
