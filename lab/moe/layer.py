"""The MoE feed-forward layer: E experts, a single-device reference, and expert parallelism over the Collective.

Spec §B10. An expert is a GELU MLP, gelu(x·W1)·W2 with W1 (h, f) and W2 (f, h),
no biases. `reference` is the single-device MoE: every kept (token, choice)
runs through its expert, scaled by its gate, summed per token.

`ExpertParallel` puts the experts on ranks: `hosts[r]` lists the experts rank r
computes (its *slots*; static EP: E/P experts per rank, contiguous or any
placement, e.g. ExFlow's; FSSDP: chosen each step, with replicas). Per layer:

1. route (lab.moe.router) on each rank's own tokens;
2. dispatch: each kept (token, choice) goes to a host of its expert — this rank
   if it hosts it, else a host on the same node, else the hosts in turn —
   through `lab.moe.exchange.Plan` (counts first, then an all_to_all_v of
   k·T·h values at most per rank; tag `<tag>_dispatch`);
3. every rank runs its slots' experts on what it received;
4. combine: the results go back the same way (`<tag>_combine`) and are summed
   with their gates.

Backward repeats both exchanges (`_bwd` tags). Bytes per rank (balanced,
no drops): dispatch and combine (P−1)/P·k·T·h·b each, forward and backward.
Exactness (E1): with the same routing the outputs and every gradient equal the
single-device MoE up to summation order (tests/test_moe_block.py: 1e-6 fp32).
`load` is the number of rows each rank computed in the last call: the
straggler metric (max) and the load imbalance (max / mean).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lab.comm.collective import Collective
from lab.moe.exchange import Plan
from lab.moe.router import Routing


def expert_ffn(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """(R, h) rows through one expert -> (R, h)."""
    return F.gelu(x @ w1) @ w2


def init_experts(num_experts: int, hidden: int, ffn: int, *, generator: torch.Generator):
    """W1 (E, h, f), W2 (E, f, h): scaled normal initialization."""
    w1 = torch.randn(num_experts, hidden, ffn, generator=generator) / hidden ** 0.5
    w2 = torch.randn(num_experts, ffn, hidden, generator=generator) / ffn ** 0.5
    return w1, w2


def reference(x: torch.Tensor, routing: Routing, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Single-device MoE: x (n, T, h) with every expert's weights (E, h, f), (E, f, h) -> y (n, T, h)."""
    y = torch.zeros_like(x)
    use = routing.keep
    for e in range(w1.shape[0]):
        i, t, c = ((routing.expert == e) & use).nonzero(as_tuple=True)
        if len(i):
            out = expert_ffn(x[i, t], w1[e], w2[e])
            y = y.index_put((i, t), routing.gate[i, t, c].unsqueeze(-1) * out, accumulate=True)
    return y


def contiguous_hosts(num_experts: int, world_size: int) -> list[list[int]]:
    """Static EP: rank r holds experts r·E/P .. (r+1)·E/P − 1."""
    if num_experts % world_size:
        raise ValueError(f"num_experts={num_experts!r} is invalid: expected a multiple of the {world_size} ranks "
                         "(expert parallelism puts E/P experts on every rank)")
    per = num_experts // world_size
    return [list(range(r * per, (r + 1) * per)) for r in range(world_size)]


def hosts_from_placement(placement, world_size: int) -> list[list[int]]:
    """placement (E,) rank of each expert -> hosts per rank (each rank's experts ascending)."""
    placement = [int(g) for g in placement]
    hosts = [[e for e, g in enumerate(placement) if g == r] for r in range(world_size)]
    if len({len(h) for h in hosts}) != 1:
        raise ValueError(f"placement={placement!r} is invalid: every rank must hold the same number of experts")
    return hosts


def destinations(routing: Routing, hosts: list[list[int]], ranks: list[int], *, ranks_per_node: int):
    """(n, T·k) destination rank and slot of each (token, choice); -1 where dropped.

    This rank if it hosts the expert, else a host on its node, else the hosts in turn (by the pair's index).
    """
    p, e = len(hosts), routing.num_experts
    slot_of = torch.full((p, e), -1, dtype=torch.long)
    for r, hs in enumerate(hosts):
        for s, ex in enumerate(hs):
            slot_of[r, ex] = s
    n = routing.expert.shape[0]
    expert = routing.expert.reshape(n, -1)  # (n, T·k)
    dest = torch.full_like(expert, -1)
    pos = torch.arange(expert.shape[1])
    for i, me in enumerate(ranks):
        for ex in expert[i].unique().tolist():
            holders = [r for r in range(p) if slot_of[r, ex] >= 0]
            if not holders:
                raise ValueError(f"expert {ex} has tokens but no host")
            sel = expert[i] == ex
            if me in holders:
                dest[i, sel] = me
                continue
            near = [r for r in holders if r // ranks_per_node == me // ranks_per_node] or holders
            dest[i, sel] = torch.tensor(near)[pos[sel] % len(near)]
    keep = routing.keep.reshape(n, -1)
    dest = torch.where(keep, dest, -1)
    slot = torch.where(keep, slot_of[dest.clamp(min=0), expert], -1)
    return dest, slot


def compute_slots(recv: torch.Tensor, slots: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """recv (n, P, cap, h) rows with their slot (n, P, cap) (-1 padding); w1 (n, S, h, f), w2 (n, S, f, h) the
    local ranks' hosted experts -> outputs at the same positions."""
    idx, outs = [], []
    for i in range(recv.shape[0]):
        for s in range(w1.shape[1]):
            src, pos = (slots[i] == s).nonzero(as_tuple=True)
            if len(src):
                idx.append((torch.full_like(src, i), src, pos))
                outs.append(expert_ffn(recv[i, src, pos], w1[i, s], w2[i, s]))
    # zeros that depend on the received rows and the weights: a rank with nothing to compute still takes part in
    # the backward exchanges (under torch.distributed every rank must run every collective of the backward)
    base = recv * 0 + (w1.sum() + w2.sum()) * 0
    if not outs:
        return base
    ii, ss, pp = (torch.cat(v) for v in zip(*idx))
    return base.index_put((ii, ss, pp), torch.cat(outs))


class ExpertParallel:
    """Dispatch, expert compute and combine over `coll` for experts hosted as `hosts` (see the module doc)."""

    def __init__(self, coll: Collective, hosts: list[list[int]], *, ranks_per_node: int | None = None):
        if len(hosts) != coll.world_size:
            raise ValueError(f"hosts has {len(hosts)} ranks, the collective {coll.world_size}")
        self.coll, self.hosts = coll, hosts
        self.ranks_per_node = ranks_per_node or coll.ledger.topology.ranks_per_node
        self.load = np.zeros(coll.world_size, dtype=np.int64)  # rows each rank computed in the last call
        self.last_plan: Plan | None = None

    @property
    def slots(self) -> int:
        return max(len(h) for h in self.hosts)

    def local_weights(self, w1: torch.Tensor, w2: torch.Tensor):
        """Every expert's weights (E, ...) -> this process's ranks' hosted ones (n, S, ...)."""
        idx = torch.tensor([self.hosts[r] for r in self.coll.ranks])
        return w1[idx], w2[idx]

    def __call__(self, x: torch.Tensor, routing: Routing, w1: torch.Tensor, w2: torch.Tensor, *,
                 tag: str = "moe") -> torch.Tensor:
        """x (n, T, h), the local ranks' hosted experts w1 (n, S, h, f), w2 (n, S, f, h) -> y (n, T, h)."""
        n, t, h = x.shape
        k = routing.expert.shape[-1]
        dest, slot = destinations(routing, self.hosts, self.coll.ranks, ranks_per_node=self.ranks_per_node)
        plan = Plan(self.coll, dest, slot, num_slots=self.slots, tag=f"{tag}_dispatch")
        self.last_plan = plan
        self.load = plan.rows.sum(axis=0)  # (P,) rows received by each rank, its own included
        recv = plan.send(x.unsqueeze(2).expand(n, t, k, h).reshape(n, t * k, h))
        out = compute_slots(recv, plan.received_slots(), w1, w2)
        back = plan.send_back(out, tag=f"{tag}_combine").view(n, t, k, h)
        weight = (routing.gate * routing.keep).unsqueeze(-1)  # (n, T, k, 1)
        return (weight * back).sum(dim=2)
