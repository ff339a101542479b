"""The tiny GPT with its context split over the ranks of a sequence-parallel group.

Every rank keeps its own copy of the parameters (a row of the cluster's `(n, d)` tensor) and runs the
per-token parts of the model (embeddings, layer norms, projections, MLP, head) on its C = T/G tokens,
with their absolute positions. Only attention crosses ranks: each `Block.attend` hook calls the chosen
method (`lab.sequence.attention`) on the rank-stacked q, k, v. The per-rank model runs under
`torch.func.vmap` over the rank axis; the hook escapes the vmap (`lab.sequence.common.VmapEscape`) to
hand the method the whole rank-stacked tensors. Plain autograd then gives every rank the gradient of
the group's loss with respect to *its* copy of the weights, which covers its own tokens' part of the
computation; summing those over the SP group is the full gradient (`sp_gradients`).

The loss of a rank is the sum of its tokens' cross-entropy divided by the group's token count B·T, so
the group's losses add up to the single-device mean loss over the same sequences.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from lab.sequence.attention import make_plan, method as get_method
from lab.sequence.common import VmapEscape
from lab.sequence.layout import shard


@contextmanager
def attention_hooks(model, hooks):
    """Install one `attend` hook per block of `model` (a TinyGPT) for the duration of the block."""
    old = [blk.attend for blk in model.blocks]
    try:
        for blk, h in zip(model.blocks, hooks):
            blk.attend = h
        yield model
    finally:
        for blk, h in zip(model.blocks, old):
            blk.attend = h


def split_batch(x: torch.Tensor, y: torch.Tensor, *, group_size: int, layout: str):
    """Token ids x, y (B, T) of one SP group -> (G, B, C) each, with positions (G, C)."""
    t = x.shape[-1]
    pos = shard(torch.arange(t), group_size, layout, dim=0)  # (G, C)
    return shard(x, group_size, layout, dim=-1), shard(y, group_size, layout, dim=-1), pos


def _row_logits(model, unflatten, buffers, row, x, pos):
    return functional_call(model, (unflatten(row), buffers), (x,), {"pos": pos})


def sp_losses(cluster, params, x, y, pos, *, plan, method: str, group_tokens: int):
    """Per-rank loss shares (n,) of rank-stacked token chunks x, y (n, B, C) at positions pos (n, C),
    with `params` (n, d); differentiable w.r.t. params. group_tokens = B·T of one SP group."""
    m = get_method(method)
    hook = partial(VmapEscape.apply, m, plan)
    model = cluster.model
    with attention_hooks(model, [hook] * len(model.blocks)):
        logits = vmap(partial(_row_logits, model, cluster.unflatten, cluster.buffers))(params, x, pos)  # (n, B, C, V)
    ce = F.cross_entropy(logits.flatten(0, 2), y.flatten(), reduction="none").view(y.shape)
    return ce.flatten(1).sum(dim=1) / group_tokens


def sp_gradients(collective, grads: torch.Tensor, *, groups, double_averaging: bool, tag: str = "sp") -> torch.Tensor:
    """Per-rank gradient shares (n, d) -> the data-parallel mean of the SP groups' full gradients.

    `double_averaging` (LSS Transformer): sum over the SP group, then mean over the data-parallel groups
    (two all-reduces). Otherwise one all-reduce over every rank, divided by the number of SP groups
    (numerically the same sum)."""
    world = collective.world_size
    g = len(groups[0])
    r = world // g
    if not double_averaging:
        return collective.all_reduce(grads, op="sum", tag=f"{tag}.grad") / r
    out = grads
    if g > 1:
        out = collective.all_reduce(out, op="sum", groups=groups if r > 1 else None, tag=f"{tag}.grad.sp")
    if r > 1:
        dp = [[grp[i] for grp in groups] for i in range(g)]
        out = collective.all_reduce(out, op="mean", groups=dp if g > 1 else None, tag=f"{tag}.grad.dp")
    return out


def sp_plan(collective, *, method: str, layout: str, groups, tag: str = "sp"):
    """The attention plan of the GPT's sequence-parallel mode (causal, as the GPT is)."""
    get_method(method)
    return make_plan(collective, causal=True, layout=layout, groups=groups, tag=tag)


def gpt_sp_loss(model_or_cluster, x, y, *, collective, method: str, layout: str = "contiguous", groups=None):
    """For tests and notebooks: token ids x, y (B, T) with the context split over the ranks of `groups` (default
    one SP group of every rank), every group holding the same batch. Returns (per-rank loss shares (n,),
    differentiable — a group's shares sum to the single-device mean loss — and the Cluster whose `params`
    they depend on)."""
    from lab.cluster import Cluster

    cluster = model_or_cluster if isinstance(model_or_cluster, Cluster) else Cluster(
        model_or_cluster, num_workers=collective.world_size, loss_fn=F.cross_entropy, ranks=collective.ranks)
    g = collective.world_size if groups is None else len(groups[0])
    xs, ys, pos = split_batch(x, y, group_size=g, layout=layout)
    idx = [r % g for r in collective.ranks]  # position in the group (groups of consecutive ranks)
    plan = sp_plan(collective, method=method, layout=layout, groups=groups)
    shares = sp_losses(cluster, cluster.params, xs[idx], ys[idx], pos[idx], plan=plan, method=method,
                       group_tokens=x.numel())
    return shares, cluster
