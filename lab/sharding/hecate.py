"""Hecate FSSDP: fully sharded experts, materialized sparsely where this step's tokens go.

Paper: Qing et al., "Hecate: Unlocking Efficient Sparse Model Training via Fully
Sharded Sparse Data Parallelism" (arXiv 2502.02581; abstract only, so the
placement heuristic here is the spec's [UNVERIFIED] reconstruction, §A6).

Idea. Every expert's parameters (and optimizer state) are split over all P
ranks, as in FSDP (homogeneous sharding: rank r owns slice r of every expert).
Each step the router's token counts decide how many replicas each expert gets
(∝ its load, `slots` replicas per rank in all) and where (greedy: the busiest
expert's replica goes to the least-loaded rank). Then:
- SparseAllGather: owners send their slices only to the expert's hosts (an
  all-to-all whose chunk for host j holds the owner's slices of j's experts);
- tokens are dispatched to a host of their expert (this rank if it hosts it,
  else a rank of the same node, else round robin), computed, combined back;
  the backward sends output gradients the same way (optionally re-gathering the
  experts first: re-materialization);
- SparseReduceScatter: each host sends slice s of its experts' gradients to
  owner s, which sums them over hosts in ascending rank order.
Dense FSDP would gather every expert on every rank; expert parallelism (EP)
keeps E/P whole experts per rank and moves only tokens, so a hot expert's rank
becomes the straggler.

What is sent (Ledger tags): `token_counts` (E int64), `sparse_all_gather`
(slots × slice bytes to each other rank), `dispatch`/`combine` and their
backward twins (token buffers padded to the largest count between two ranks,
with int32 expert ids), `sparse_reduce_scatter`. Knobs: `slots` (replicas per
rank per step), `rematerialize`.

Exactness (E1): with the same routing and no dropped tokens, outputs and expert
gradients equal a single-device MoE (`MoE.reference`) up to summation order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab.comm.collective import Collective, ordered_sum
from lab.comm.packet import Packet


class MoE:
    """E experts, each relu(x·w1)·w2 with w1 (h, f), w2 (f, h); a top-k softmax router; no token dropping."""

    def __init__(self, *, hidden: int = 16, ffn: int = 32, experts: int = 8, top_k: int = 2, skew: float = 0.0,
                 seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.hidden, self.ffn, self.experts, self.top_k = hidden, ffn, experts, top_k
        self.w1 = torch.randn(experts, hidden, ffn, generator=g) / hidden ** 0.5
        self.w2 = torch.randn(experts, ffn, hidden, generator=g) / ffn ** 0.5
        self.router = torch.randn(hidden, experts, generator=g) / hidden ** 0.5
        self.bias = -skew * torch.arange(experts, dtype=torch.float32)  # skew > 0: low experts are hot

    @property
    def expert_numel(self) -> int:
        return 2 * self.hidden * self.ffn

    def flat(self) -> torch.Tensor:
        """(E, S_e) every expert's parameters, w1 then w2."""
        return torch.cat([self.w1.reshape(self.experts, -1), self.w2.reshape(self.experts, -1)], dim=1)

    def unflat(self, row: torch.Tensor):
        """(S_e,) -> (w1, w2) of one expert (views)."""
        k = self.hidden * self.ffn
        return row[:k].view(self.hidden, self.ffn), row[k:2 * k].view(self.ffn, self.hidden)

    def route(self, x: torch.Tensor):
        """x (T, h) -> expert ids (T, k) and gate weights (T, k), softmax over the top-k logits."""
        logits = x @ self.router + self.bias
        top = logits.topk(self.top_k, dim=-1)
        return top.indices, torch.softmax(top.values, dim=-1)

    def expert(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.unflat(row)
        return F.relu(x @ w1) @ w2

    def reference(self, x: torch.Tensor, dy: torch.Tensor):
        """Single device: outputs y (T, h) and expert gradients (E, S_e) of sum(y · dy), router fixed."""
        params = self.flat().clone().requires_grad_(True)
        idx, gate = self.route(x)
        y = torch.zeros_like(x)
        for j in range(self.top_k):
            for e in range(self.experts):
                sel = idx[:, j] == e
                if sel.any():
                    y[sel] += gate[sel, j:j + 1] * self.expert(x[sel], params[e])
        (grad,) = torch.autograd.grad((y * dy).sum(), params)
        return y.detach(), grad


def place(counts: torch.Tensor, *, world_size: int, slots: int) -> list[list[int]]:
    """Experts each rank hosts this step (`slots` distinct experts per rank), replicas ∝ load.

    Every expert with tokens gets at least one replica; the other slots go to the expert with the most
    tokens per replica, one at a time. Replicas are then placed busiest expert first, each on the rank with
    the fewest tokens so far among those with a free slot that do not host it yet.
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
        best = max((i for i in range(e) if replicas[i] < world_size), key=lambda i: (load[i] / max(replicas[i], 1), -i))
        replicas[best] += 1
    hosts: list[list[int]] = [[] for _ in range(world_size)]
    tokens = [0.0] * world_size
    for i in sorted(range(e), key=lambda i: (-load[i], i)):
        for _ in range(replicas[i]):
            r = min((r for r in range(world_size) if len(hosts[r]) < slots and i not in hosts[r]),
                    key=lambda r: (tokens[r], r))
            hosts[r].append(i)
            tokens[r] += load[i] / replicas[i]
    # fill unused slots with idle experts so every rank hosts exactly `slots` (shapes stay equal)
    for r in range(world_size):
        for i in range(e):
            if len(hosts[r]) == slots:
                break
            if i not in hosts[r]:
                hosts[r].append(i)
        hosts[r].sort()
    return hosts


class ExpertLayer:
    """Experts on ranks and the token exchange around them; subclasses decide who hosts what.

    `step(x, dy)` with this process's ranks' tokens x and output gradients dy (n, T, h) returns the outputs
    y (n, T, h) and the subclass's expert gradients. `max_tokens` is the most (token, choice) pairs any rank
    computed in the last step: the straggler.
    """

    slots: int = 1

    def __init__(self, moe: MoE, collective: Collective, *, ranks_per_node: int | None = None):
        self.moe, self.coll, self.p = moe, collective, collective.world_size
        self.ranks_per_node = ranks_per_node or collective.ledger.topology.ranks_per_node
        self.hosts: list[list[int]] = []
        self.max_tokens = 0

    # ---- what subclasses provide -------------------------------------------------------------------
    def _place(self, idx: torch.Tensor) -> None:
        """Set `self.hosts` for this step."""
        raise NotImplementedError

    def _experts(self, *, tag: str) -> torch.Tensor:
        """(n, slots, S_e) parameters of the experts each local rank hosts."""
        raise NotImplementedError

    def _grads(self, grads: torch.Tensor, *, tag: str) -> torch.Tensor:
        return grads

    rematerialize = False

    # ---- the step ------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, dy: torch.Tensor):
        moe = self.moe
        n, t, _ = x.shape
        routed = [moe.route(x[i]) for i in range(n)]
        idx = torch.stack([r[0] for r in routed])  # (n, T, k)
        gate = torch.stack([r[1] for r in routed])  # (n, T, k)
        self._place(idx)
        self.max_tokens = 0
        experts = self._experts(tag="sparse_all_gather")
        dest = self._destinations(idx)  # (n, T, k) host of each (token, choice)
        recv_x, recv_e, plan = self._dispatch(x.unsqueeze(2).expand(n, t, moe.top_k, -1), idx, dest, tag="dispatch")
        out = self._compute(recv_x, recv_e, experts)
        y = (gate.unsqueeze(-1) * self._combine(out, plan, t, tag="combine")).sum(dim=2)  # (n, T, h)
        if self.rematerialize:
            experts = self._experts(tag="sparse_all_gather_bwd")
        g_out = gate.unsqueeze(-1) * dy.unsqueeze(2)  # (n, T, k, h): gradient of each expert output
        recv_g, _, _ = self._dispatch(g_out, idx, dest, tag="dispatch_bwd", ids=False)
        grads, dx = self._backward(recv_x, recv_e, recv_g, experts)
        self._combine(dx, plan, t, tag="combine_bwd")  # input gradients go back to the tokens' ranks
        return y, self._grads(grads, tag="sparse_reduce_scatter")

    # ---- token exchange --------------------------------------------------------------------------------
    def _destinations(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank if it hosts the expert, else a host in its node, else the hosts in turn."""
        holders = {e: [r for r in range(self.p) if e in self.hosts[r]] for e in range(self.moe.experts)}
        dest = torch.empty_like(idx)
        for i, rank in enumerate(self.coll.ranks):
            node = rank // self.ranks_per_node
            out = []
            for pos, e in enumerate(idx[i].reshape(-1).tolist()):
                hs = holders[e]
                near = [r for r in hs if r // self.ranks_per_node == node] or hs
                out.append(rank if rank in hs else near[pos % len(near)])
            dest[i] = torch.tensor(out).view(idx[i].shape)
        return dest

    def _dispatch(self, v, idx, dest, *, tag, ids=True):
        """Send each (token, choice)'s vector v (n, T, k, h) to its host, with the expert id (int32) when
        `ids`; buffers padded to the largest count between two ranks (the counts are exchanged first)."""
        n, t, k = idx.shape
        cnt = torch.stack([torch.bincount(dest[i].reshape(-1), minlength=self.p) for i in range(n)])  # (n, P)
        cap = int(self.coll.all_gather(cnt, tag=f"{tag}_counts").max())
        buf = torch.zeros(n, self.p, cap, v.shape[-1])
        eid = torch.full((n, self.p, cap), -1, dtype=torch.int32)
        plan = []
        for i in range(n):
            fill, slots = [0] * self.p, []
            for tok in range(t):
                for j in range(k):
                    d = int(dest[i, tok, j])
                    buf[i, d, fill[d]] = v[i, tok, j]
                    eid[i, d, fill[d]] = int(idx[i, tok, j])
                    slots.append((tok, j, d, fill[d]))
                    fill[d] += 1
            plan.append(slots)
        packet = Packet({"x": buf, "ids": eid} if ids else {"x": buf})
        got = self.coll.all_to_all(packet, tag=tag)
        recv_e = got.tensors["ids"] if ids else None  # (n, P, cap), -1 = padding
        if ids:
            self.max_tokens = max(self.max_tokens, int((recv_e >= 0).sum(dim=(1, 2)).max()))
        return got.tensors["x"], recv_e, plan

    def _slot(self, i: int, e: int) -> int:
        return self.hosts[self.coll.ranks[i]].index(e)

    def _compute(self, recv_x, recv_e, experts):
        out = torch.zeros_like(recv_x)
        for i in range(recv_x.shape[0]):
            for e in recv_e[i][recv_e[i] >= 0].unique().tolist():
                sel = recv_e[i] == e
                out[i][sel] = self.moe.expert(recv_x[i][sel], experts[i, self._slot(i, e)])
        return out

    def _backward(self, recv_x, recv_e, recv_g, experts):
        """Gradients of each hosted expert (n, slots, S_e) and of the received tokens (n, P, cap, h)."""
        n = recv_x.shape[0]
        grads = torch.zeros(n, self.slots, self.moe.expert_numel)
        dx = torch.zeros_like(recv_x)
        for i in range(n):
            for e in recv_e[i][recv_e[i] >= 0].unique().tolist():
                sel, s = recv_e[i] == e, self._slot(i, e)
                w = experts[i, s].clone().requires_grad_(True)
                xs = recv_x[i][sel].clone().requires_grad_(True)
                gw, gx = torch.autograd.grad((self.moe.expert(xs, w) * recv_g[i][sel]).sum(), (w, xs))
                grads[i, s], dx[i][sel] = gw, gx
        return grads, dx

    def _combine(self, out, plan, t, *, tag):
        """Results back to the tokens' ranks -> (n, T, k, h)."""
        back = self.coll.all_to_all(out, tag=tag)  # (n, P, cap, h): from host d, my tokens' results
        res = torch.zeros(out.shape[0], t, self.moe.top_k, out.shape[-1])
        for i, slots in enumerate(plan):
            for tok, j, d, pos in slots:
                res[i, tok, j] = back[i, d, pos]
        return res


class ExpertParallel(ExpertLayer):
    """Expert parallelism: expert e lives on rank e // (E/P) for good; only tokens move."""

    def __init__(self, moe: MoE, collective: Collective, **kw):
        super().__init__(moe, collective, **kw)
        if moe.experts % self.p:
            raise ValueError(f"expert parallelism needs experts ({moe.experts}) divisible by the world size {self.p}")
        self.slots = moe.experts // self.p
        self.hosts = [list(range(r * self.slots, (r + 1) * self.slots)) for r in range(self.p)]
        self.resident = moe.flat()[torch.tensor([self.hosts[r] for r in collective.ranks])]  # (n, E/P, S_e)

    def _place(self, idx):
        pass

    def _experts(self, *, tag):
        return self.resident


class FSSDP(ExpertLayer):
    """Every expert split over all ranks (slice r on rank r); `slots` experts materialized per rank per step."""

    def __init__(self, moe: MoE, collective: Collective, *, slots: int = 2, rematerialize: bool = True, **kw):
        super().__init__(moe, collective, **kw)
        self.slots, self.rematerialize = slots, rematerialize
        self.shard = math.ceil(moe.expert_numel / self.p)
        full = F.pad(moe.flat(), (0, self.shard * self.p - moe.expert_numel))  # (E, P·c)
        self.shards = torch.stack([full[:, r * self.shard:(r + 1) * self.shard] for r in collective.ranks])  # (n, E, c)

    def _place(self, idx):
        local = torch.stack([torch.bincount(idx[i].reshape(-1), minlength=self.moe.experts)
                             for i in range(idx.shape[0])])
        counts = self.coll.all_reduce(local, op="sum", tag="token_counts")[0]  # (E,) every rank knows the load
        self.hosts = place(counts, world_size=self.p, slots=self.slots)

    def _experts(self, *, tag):
        """SparseAllGather: owner i's chunk for host j holds i's slices of the experts j hosts."""
        n = self.shards.shape[0]
        send = torch.stack([self.shards[:, self.hosts[j]] for j in range(self.p)], dim=1)  # (n, P, slots, c)
        recv = self.coll.all_to_all(send, tag=tag)  # (n, P, slots, c)
        return recv.permute(0, 2, 1, 3).reshape(n, self.slots, -1)[:, :, :self.moe.expert_numel]

    def _grads(self, grads, *, tag):
        """SparseReduceScatter: slice s of every hosted expert's gradient to owner s, summed over hosts."""
        n = grads.shape[0]
        padded = F.pad(grads, (0, self.p * self.shard - self.moe.expert_numel)).view(n, self.slots, self.p, self.shard)
        recv = self.coll.all_to_all(padded.transpose(1, 2).contiguous(), tag=tag)  # (n, P, slots, c)
        out = torch.zeros(n, self.moe.experts, self.shard)
        for e in range(self.moe.experts):
            senders = [h for h in range(self.p) if e in self.hosts[h]]
            for i in range(n if senders else 0):  # an expert nobody hosted has no gradient
                out[i, e] = ordered_sum(torch.stack([recv[i, h, self.hosts[h].index(e)] for h in senders]))
        return out


def memory_per_rank(moe: MoE, world_size: int, *, scheme: str, slots: int = 2, param_bytes: int = 2,
                    grad_bytes: int = 2, state_bytes: int = 12) -> dict[str, float]:
    """Bytes per rank for the experts: 'fssdp' (owned slices with their optimizer state + `slots` materialized
    experts and their gradients), 'ep' (E/P whole experts with state), 'fsdp' (slices + every expert gathered)."""
    s_e, e, p = moe.expert_numel, moe.experts, world_size
    owned = e * math.ceil(s_e / p) * (param_bytes + grad_bytes + state_bytes)
    if scheme == "fssdp":
        return {"states": owned, "materialized": slots * s_e * (param_bytes + grad_bytes)}
    if scheme == "fsdp":
        return {"states": owned, "materialized": e * s_e * (param_bytes + grad_bytes)}
    if scheme == "ep":
        return {"states": e / p * s_e * (param_bytes + grad_bytes + state_bytes), "materialized": 0.0}
    raise ValueError(f"scheme={scheme!r} is invalid: expected 'fssdp', 'ep' or 'fsdp'")
