"""Hecate FSSDP: fully sharded experts, materialized sparsely where this step's tokens go.

Paper: Qing et al., "Hecate: Unlocking Efficient Sparse Model Training via Fully
Sharded Sparse Data Parallelism" (arXiv 2502.02581; abstract only, so the
placement heuristic here is the spec's [UNVERIFIED] reconstruction, §A6).

Idea. Every expert's parameters (and optimizer state) are split over all P
ranks, as in FSDP (homogeneous sharding: rank r owns slice r of every expert of
every layer). Each step and layer the router's token counts decide how many
replicas each expert gets (∝ its load, `slots` replicas per rank in all) and
where (`place`: the busiest expert's replica goes to the least-loaded rank). Then:
- SparseAllGather: owners send their slices only to the expert's hosts (an
  all-to-all whose chunk for host j holds the owner's slices of j's experts);
- tokens are dispatched to a host of their expert and combined back exactly as
  in expert parallelism (lab.moe.layer.ExpertParallel with this step's hosts:
  this rank if it hosts the expert, else a host on its node, else in turn);
- backward: with `rematerialize` the experts were freed after the forward and
  are gathered again (the bytes are sent and recorded; the lab's autograd keeps
  the values, so memory is modelled by `memory_per_rank`, not measured);
- SparseReduceScatter: each host sends slice s of its experts' gradients to
  owner s, which sums them over hosts in ascending rank order. It is the
  backward of the SparseAllGather (an autograd Function).
Dense FSDP would gather every expert on every rank; expert parallelism (EP)
keeps E/P whole experts per rank and moves only tokens, so a hot expert's rank
becomes the straggler (`load_history`: rows computed per rank and layer).

What is sent per layer (Ledger tags): `token_counts` (E int64 all-reduce),
`sparse_all_gather` (slots × slice bytes to each other rank; again as
`sparse_all_gather_bwd` with rematerialization), dispatch/combine as in EP, and
`sparse_reduce_scatter`. Knobs: `fssdp_slots` (replicas per rank per layer),
`fssdp_rematerialize`.

Exactness (E1): with the same routing and no dropped tokens, outputs and expert
gradients equal the single-device MoE up to summation order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab.comm.collective import ordered_sum
from lab.knobs import Knob, bad
from lab.moe.ep import ExpertParallelTraining
from lab.moe.layer import ExpertParallel
from lab.moe.strategies import Strategy


def place(counts: torch.Tensor, *, world_size: int, slots: int) -> list[list[int]]:
    """Experts each rank hosts this step (`slots` distinct experts per rank), replicas ∝ load.

    Every expert with tokens gets at least one replica; the other slots go to the expert with the most
    tokens per replica, one at a time. Replicas are then placed busiest expert first, each on the rank with
    the fewest tokens so far among those with a free slot that do not host it yet. Unused slots are filled
    with idle experts so every rank hosts exactly `slots` (shapes stay equal).
    """
    e = counts.numel()
    if not 1 <= slots <= e:
        raise ValueError(f"slots={slots!r} is invalid: expected 1..{e} experts per rank")
    load = counts.double().tolist()
    replicas = [1 if c > 0 else 0 for c in load]
    free = world_size * slots - sum(replicas)
    if free < 0:
        raise ValueError(f"slots={slots!r} is too few: {sum(replicas)} experts have tokens and {world_size} ranks "
                         f"hold {world_size * slots} replicas")
    for _ in range(free):
        open_ = [i for i in range(e) if replicas[i] < world_size]
        if not open_:
            break
        best = max(open_, key=lambda i: (load[i] / max(replicas[i], 1), -i))
        replicas[best] += 1
    hosts: list[list[int]] = [[] for _ in range(world_size)]
    tokens = [0.0] * world_size
    for i in sorted(range(e), key=lambda i: (-load[i], i)):
        for _ in range(replicas[i]):
            r = min((r for r in range(world_size) if len(hosts[r]) < slots and i not in hosts[r]),
                    key=lambda r: (tokens[r], r))
            hosts[r].append(i)
            tokens[r] += load[i] / replicas[i]
    for r in range(world_size):
        for i in range(e):
            if len(hosts[r]) == slots:
                break
            if i not in hosts[r]:
                hosts[r].append(i)
        hosts[r].sort()
    return hosts


class _SparseGather(torch.autograd.Function):
    """shards (n, E, c) -> materialized hosted experts (n, slots, S_e); backward: SparseReduceScatter."""

    @staticmethod
    def forward(ctx, shards, coll, hosts, numel, remat):
        ctx.coll, ctx.hosts, ctx.numel, ctx.remat = coll, hosts, numel, remat
        ctx.save_for_backward(shards)
        return _gather(coll, shards, hosts, numel, tag="sparse_all_gather")

    @staticmethod
    def backward(ctx, grad):
        coll, hosts = ctx.coll, ctx.hosts
        (shards,) = ctx.saved_tensors
        if ctx.remat:  # the experts were freed after the forward: gathered again for the backward
            _gather(coll, shards, hosts, ctx.numel, tag="sparse_all_gather_bwd")
        n, slots, _ = grad.shape
        p, c = coll.world_size, shards.shape[-1]
        padded = F.pad(grad, (0, p * c - ctx.numel)).view(n, slots, p, c)
        recv = coll.all_to_all(padded.transpose(1, 2).contiguous(), tag="sparse_reduce_scatter")  # (n, P, slots, c)
        out = torch.zeros_like(shards)
        for e in range(shards.shape[1]):
            senders = [h for h in range(p) if e in hosts[h]]
            for i in range(n if senders else 0):  # an expert nobody hosted has no gradient
                out[i, e] = ordered_sum(torch.stack([recv[i, h, hosts[h].index(e)] for h in senders]))
        return out, None, None, None, None


def _gather(coll, shards, hosts, numel, *, tag):
    """Owner i's chunk for host j holds i's slices of the experts j hosts."""
    n = shards.shape[0]
    send = torch.stack([shards[:, hosts[j]] for j in range(coll.world_size)], dim=1)  # (n, P, slots, c)
    recv = coll.all_to_all(send, tag=tag)  # (n, P, slots, c)
    return recv.permute(0, 2, 1, 3).reshape(n, len(hosts[0]), -1)[:, :, :numel]


class FSSDP(Strategy):
    """Every expert of every layer split over all ranks; `slots` experts materialized per rank per layer."""

    name = "fssdp"

    def __init__(self, coll, shape, *, slots: int = 2, rematerialize: bool = True,
                 ranks_per_node: int | None = None):
        super().__init__(coll, shape)
        e, p = shape.num_experts, coll.world_size
        if not 1 <= slots <= e:
            raise ValueError(f"fssdp_slots={slots!r} is invalid: expected 1..{e} (the number of experts)")
        if slots * p < e:
            raise ValueError(f"fssdp_slots={slots!r} is too few: {p} ranks x {slots} slots cannot host "
                             f"{e} experts; expected at least {math.ceil(e / p)}")
        self.slots, self.rematerialize = slots, rematerialize
        self.ranks_per_node = ranks_per_node or coll.ledger.topology.ranks_per_node
        self.shard = math.ceil(shape.expert_numel / p)
        self.host_history: list = []

    def init_rows(self, experts):
        s, p = self.shape, self.coll.world_size
        rows = []
        for r in self.coll.ranks:
            per_layer = []
            for w1, w2 in experts:
                full = F.pad(torch.cat([w1.flatten(1), w2.flatten(1)], 1), (0, self.shard * p - s.expert_numel))
                per_layer.append(full[:, r * self.shard:(r + 1) * self.shard].reshape(-1))  # (E·c,)
            rows.append(torch.cat(per_layer))
        return torch.stack(rows)

    def shards(self, rows: torch.Tensor, l: int) -> torch.Tensor:
        """(n, d_e) -> layer l's shards (n, E, c)."""
        e, c = self.shape.num_experts, self.shard
        return rows.view(rows.shape[0], self.shape.num_layers, e, c)[:, l]

    def layer(self, rows, l, tokens, routing, *, tag):
        s = self.shape
        local = routing.kept_counts  # (n, E)
        counts = self.coll.all_reduce(local, op="sum", tag="token_counts")[0]  # every rank knows the load
        hosts = place(counts, world_size=self.coll.world_size, slots=self.slots)
        self.host_history.append(hosts)
        mat = _SparseGather.apply(self.shards(rows, l), self.coll, hosts, s.expert_numel, self.rematerialize)
        k = s.hidden * s.ffn
        n = mat.shape[0]
        w1 = mat[:, :, :k].reshape(n, self.slots, s.hidden, s.ffn)
        w2 = mat[:, :, k:].reshape(n, self.slots, s.ffn, s.hidden)
        ep = ExpertParallel(self.coll, hosts, ranks_per_node=self.ranks_per_node)
        y = ep(tokens, routing, w1, w2, tag=tag)
        self.load_history.append(ep.load.copy())
        return y

    def full_experts(self, rows):
        s, p = self.shape, self.coll.world_size
        every = self.coll.all_gather(rows.detach(), record=False)[0]  # (P, d_e)
        out = []
        for l in range(s.num_layers):
            sh = every.view(p, s.num_layers, s.num_experts, self.shard)[:, l]  # (P, E, c)
            full = sh.permute(1, 0, 2).reshape(s.num_experts, -1)[:, :s.expert_numel]
            k = s.hidden * s.ffn
            out.append((full[:, :k].reshape(-1, s.hidden, s.ffn), full[:, k:].reshape(-1, s.ffn, s.hidden)))
        return out


def memory_per_rank(*, expert_numel: int, num_experts: int, world_size: int, scheme: str, slots: int = 2,
                    param_bytes: int = 2, grad_bytes: int = 2, state_bytes: int = 12) -> dict[str, float]:
    """Bytes per rank for one layer's experts: 'fssdp' (owned slices with their optimizer state + `slots`
    materialized experts and their gradients), 'ep' (E/P whole experts with state), 'fsdp' (slices + every
    expert gathered)."""
    s_e, e, p = expert_numel, num_experts, world_size
    owned = e * math.ceil(s_e / p) * (param_bytes + grad_bytes + state_bytes)
    if scheme == "fssdp":
        return {"states": owned, "materialized": slots * s_e * (param_bytes + grad_bytes)}
    if scheme == "fsdp":
        return {"states": owned, "materialized": e * s_e * (param_bytes + grad_bytes)}
    if scheme == "ep":
        return {"states": e / p * s_e * (param_bytes + grad_bytes + state_bytes), "materialized": 0.0}
    raise ValueError(f"scheme={scheme!r} is invalid: expected 'fssdp', 'ep' or 'fsdp'")


class FSSDPTraining(ExpertParallelTraining):
    """Hecate FSSDP on the MoE model: experts fully sharded, materialized where the step's tokens go."""

    name = "fssdp"
    label = "FSSDP"
    label_knobs = ("fssdp_slots",)
    knobs = {
        "fssdp_slots": Knob(2, "fssdp: experts materialized per rank per MoE layer (replicas follow the load)",
                            low=1, high=1024),
        "fssdp_rematerialize": Knob(True, "fssdp: free the gathered experts after the forward and gather them "
                                    "again for the backward"),
    }

    @classmethod
    def check_layout(cls, config) -> None:
        e, p, s = config.num_experts, config.num_workers, config.fssdp_slots
        if s > e:
            bad("fssdp_slots", s, f"at most num_experts={e}")
        if s * p < e:
            bad("fssdp_slots", s, f"at least ceil(num_experts / num_workers) = {math.ceil(e / p)} (every expert "
                "needs a host)")

    def make_strategy(self, ctx):
        return FSSDP(ctx.collective, self.shape, slots=self.config.fssdp_slots,
                     rematerialize=self.config.fssdp_rematerialize)
