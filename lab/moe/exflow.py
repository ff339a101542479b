"""ExFlow: inter-layer expert affinity, exact placement, and context-coherent expert parallelism (inference).

Paper: Yao, Anthony, Shafi, Subramoni, Panda, "Exploiting Inter-Layer Expert
Affinity for Accelerating Mixture-of-Experts Model Inference" (arXiv 2401.08383;
spec §B11). Routing is correlated across consecutive layers: a token that used
expert e at layer l tends to use a few experts e' at layer l+1.

1. Affinity: A_l(e, e') = tokens routed to e at layer l and to e' at l+1,
   counted from a routing trace (`affinity`; first choices).
2. Placement: x_{l,e,g} ∈ {0,1}, Σ_g x = 1, Σ_e x = E/G, maximize
   Σ_l Σ_{e,e'} A_l(e,e') Σ_g x_{l,e,g}·x_{l+1,e',g}, i.e. keep likely
   transitions on one GPU (`solve_placement`). Solved exactly at lab scale:
   exhaustively when a layer has few balanced assignments (≤ 3000: E = 8 on 4
   GPUs has 2520) — every assignment of every layer, by dynamic programming
   over the layers since the objective only couples neighbours — else as a
   MILP (scipy.optimize.milp, HiGHS) with the products linearized by y ≤ x,
   y ≤ x' and expert 0 of layer 0 fixed on GPU 0 (GPU labels are symmetric);
   'greedy' (layer by layer, each expert next to its heaviest predecessor)
   for comparison.
3. Context-coherent dispatch (`coherent_forward`): standard EP sends every
   token to its expert's GPU and back home in every layer, two all-to-alls
   per layer (`standard_forward`). ExFlow keeps the attention context
   replicated on every GPU, so a token continues from the GPU where its
   expert ran: one all-to-all per layer, in which a token whose next expert
   sits on the same GPU does not move. At the end of the step the tokens go
   home, and the context is kept coherent by one all-gather of the new tokens'
   hidden states per decode step — how ExFlow really maintains coherence is
   [UNVERIFIED] in the spec; this is the spec's model of it.

The lab runs it on a stack of top-1 MoE layers x ← x + expert_{l,e}(LN(x))
driven by a routing trace (between the layers the real model would run
attention over the coherent context; it moves no tokens). Both schedules move
real hidden states through the Collective (all_to_all_v, true bytes; the
coherent schedule also sends each moving token's id, int32), and their outputs
are identical (E0: placement only moves computation). Bytes: standard
2·(tokens off their home GPU)·h·b per layer; coherent (tokens whose GPU
changes)·(h·b + 4) per layer, the trip home, and the coherence all-gather.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from lab.comm.collective import Collective
from lab.moe.exchange import Plan
from lab.moe.layer import expert_ffn


# ---- affinity and placement ------------------------------------------------------------------------------
def affinity(trace: np.ndarray, num_experts: int) -> np.ndarray:
    """trace (N tokens, L layers) expert ids -> A (L−1, E, E) transition counts."""
    trace = np.asarray(trace)
    n, layers = trace.shape
    out = np.zeros((layers - 1, num_experts, num_experts), dtype=np.int64)
    for l in range(layers - 1):
        np.add.at(out[l], (trace[:, l], trace[:, l + 1]), 1)
    return out


def cross_gpu_transitions(aff: np.ndarray, placement: np.ndarray) -> int:
    """Σ_l Σ_{e,e'} A_l(e, e')·[g_l(e) ≠ g_{l+1}(e')] for placement (L, E) GPU ids."""
    placement = np.asarray(placement)
    return int(sum((aff[l] * (placement[l][:, None] != placement[l + 1][None, :])).sum()
                   for l in range(aff.shape[0])))


def contiguous_placement(num_layers: int, num_experts: int, num_gpus: int) -> np.ndarray:
    """(L, E): expert e on GPU e // (E/G) in every layer (plain EP)."""
    return np.tile(np.arange(num_experts) // (num_experts // num_gpus), (num_layers, 1))


def partitions(num_experts: int, num_gpus: int) -> np.ndarray:
    """(K, E) every split of E experts into G groups of E/G, unlabeled: group k is the one whose lowest
    expert is k-th lowest (GPU labels are symmetric, so these are all layer 0 needs)."""
    per, out = num_experts // num_gpus, []

    def fill(g, left, k):
        if not left:
            out.append(g.copy())
            return
        for rest in itertools.combinations(left[1:], per - 1):  # the lowest free expert opens group k
            group = (left[0], *rest)
            g[list(group)] = k
            fill(g, [e for e in left if e not in group], k + 1)

    fill(np.zeros(num_experts, dtype=np.int64), list(range(num_experts)), 0)
    return np.stack(out)


def balanced_assignments(num_experts: int, num_gpus: int) -> np.ndarray:
    """(K, E) every assignment of E experts to G labeled GPUs with E/G experts each."""
    perms = np.array(list(itertools.permutations(range(num_gpus))))  # (G!, G)
    return np.unique(perms[:, partitions(num_experts, num_gpus)].reshape(-1, num_experts), axis=0)


def solve_placement(aff: np.ndarray, num_gpus: int, *, method: str = "auto", max_exhaustive: int = 3_000):
    """(L, E) GPU of every expert, maximizing same-GPU transitions (see the module doc)."""
    e = aff.shape[1]
    if num_gpus < 1 or e % num_gpus:
        raise ValueError(f"num_gpus={num_gpus!r} is invalid: expected a divisor of num_experts={e}")
    if method not in ("auto", "exhaustive", "milp", "greedy"):
        raise ValueError(f"method={method!r} is invalid; allowed: 'auto', 'exhaustive', 'milp', 'greedy'")
    per_layer = math.factorial(e) // (math.factorial(e // num_gpus) ** num_gpus)  # balanced assignments
    if method == "auto":
        method = "exhaustive" if per_layer <= max_exhaustive else "milp"
    if method == "greedy":
        return _greedy(aff, num_gpus)
    if method == "exhaustive":
        return _exhaustive(aff, num_gpus)
    return _milp(aff, num_gpus)


def _exhaustive(aff, num_gpus):
    """Exact by dynamic programming over the layers (the objective couples neighbouring layers only): every
    split of layer 0 into groups (its labels are free by symmetry), every balanced assignment of the others."""
    layers, e = aff.shape[0] + 1, aff.shape[1]
    eye = np.eye(num_gpus)
    states = [partitions(e, num_gpus)] + [balanced_assignments(e, num_gpus)] * (layers - 1)
    value, back = np.zeros(len(states[0])), []
    for l in range(layers - 1):
        prev, nxt = eye[states[l]], eye[states[l + 1]]  # (Kp, E, G), (K, E, G)
        flow = np.einsum("pek,ef->pkf", prev, aff[l]).reshape(len(prev), -1)  # tokens from GPU k to expert f
        kept = flow @ nxt.transpose(0, 2, 1).reshape(len(nxt), -1).T  # (Kp, K) same-GPU transitions
        total = value[:, None] + kept
        back.append(total.argmax(0))
        value = total.max(0)
    best = [int(value.argmax())]
    for b in reversed(back):
        best.append(int(b[best[-1]]))
    best = best[::-1]
    return np.stack([states[l][best[l]] for l in range(layers)])


def _milp(aff, num_gpus):
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    layers, e = aff.shape[0] + 1, aff.shape[1]
    g, per = num_gpus, e // num_gpus
    nx = layers * e * g
    xi = lambda l, a, k: (l * e + a) * g + k  # noqa: E731
    pairs = [(l, a, b, k) for l in range(layers - 1) for a in range(e) for b in range(e) if aff[l, a, b]
             for k in range(g)]
    nv = nx + len(pairs)
    c = np.zeros(nv)
    for j, (l, a, b, _) in enumerate(pairs):
        c[nx + j] = -aff[l, a, b]  # maximize kept transitions
    rows = layers * e + layers * g + 2 * len(pairs)
    m = lil_matrix((rows, nv))
    lo, hi = np.zeros(rows), np.zeros(rows)
    r = 0
    for l in range(layers):
        for a in range(e):  # every expert on one GPU
            for k in range(g):
                m[r, xi(l, a, k)] = 1
            lo[r] = hi[r] = 1
            r += 1
        for k in range(g):  # E/G experts per GPU
            for a in range(e):
                m[r, xi(l, a, k)] = 1
            lo[r] = hi[r] = per
            r += 1
    for j, (l, a, b, k) in enumerate(pairs):  # y <= x_{l,a,k}, y <= x_{l+1,b,k}
        for col in (xi(l, a, k), xi(l + 1, b, k)):
            m[r, nx + j], m[r, col] = 1, -1
            lo[r], hi[r] = -np.inf, 0
            r += 1
    lb, ub = np.zeros(nv), np.ones(nv)
    lb[xi(0, 0, 0)] = 1  # symmetry: expert 0 of layer 0 on GPU 0
    res = milp(c, constraints=LinearConstraint(m.tocsr(), lo, hi), integrality=np.r_[np.ones(nx), np.zeros(len(pairs))],
               bounds=Bounds(lb, ub))
    if not res.success:
        raise RuntimeError(f"ExFlow placement MILP failed: {res.message}")
    x = np.round(res.x[:nx]).reshape(layers, e, g)
    return x.argmax(-1)


def _greedy(aff, num_gpus):
    layers, e = aff.shape[0] + 1, aff.shape[1]
    per = e // num_gpus
    out = [contiguous_placement(1, e, num_gpus)[0]]
    for l in range(layers - 1):
        pull = np.zeros((e, num_gpus))  # tokens expert b receives from each GPU
        for k in range(num_gpus):
            pull[:, k] = aff[l][out[-1] == k].sum(0)
        g, free = np.full(e, -1), [per] * num_gpus
        for b, k in sorted(((b, k) for b in range(e) for k in range(num_gpus)), key=lambda bk: -pull[bk]):
            if g[b] < 0 and free[k]:
                g[b], free[k] = k, free[k] - 1
        out.append(g)
    return np.stack(out)


# ---- the two schedules on a stack of MoE layers ------------------------------------------------------------
def _layer(rows, slots, weights, hosts_of, ranks):
    """rows (n, R, h) at the ranks that host their experts; slots (n, R) (-1 invalid); weights (W1 (E, h, f),
    W2 (E, f, h)) of the layer -> x + expert(LN(x))."""
    out = rows.clone()
    for i, rank in enumerate(ranks):
        for s, ex in enumerate(hosts_of[rank]):
            sel = slots[i] == s
            if sel.any():
                x = rows[i, sel]
                out[i, sel] = x + expert_ffn(F.layer_norm(x, x.shape[-1:]), weights[0][ex], weights[1][ex])
    return out


def _hosts(placement_l, num_gpus):
    return [[int(e) for e in np.flatnonzero(placement_l == g)] for g in range(num_gpus)]


def _slot_table(hosts):
    table = {}
    for g, hs in enumerate(hosts):
        for s, ex in enumerate(hs):
            table[ex] = (g, s)
    return table


@torch.no_grad()
def standard_forward(coll: Collective, x: torch.Tensor, trace: torch.Tensor, experts, placement) -> torch.Tensor:
    """x (n, T, h) tokens at home, trace (P, T, L) expert ids, experts[l] = (W1 (E, h, f), W2 (E, f, h)),
    placement (L, E) -> the stack's output at home. Two all_to_all_v per layer."""
    n, t, _ = x.shape
    for l in range(trace.shape[-1]):
        hosts = _hosts(np.asarray(placement[l]), coll.world_size)
        table = _slot_table(hosts)
        ex = trace[coll.ranks, :, l]  # (n, T)
        dest = torch.tensor([[table[int(e)][0] for e in row] for row in ex])
        slot = torch.tensor([[table[int(e)][1] for e in row] for row in ex])
        plan = Plan(coll, dest, slot, num_slots=len(hosts[0]), tag=f"exflow{l}_dispatch")
        recv = plan.send(x)  # (n, P, cap, h)
        got = _layer(recv.flatten(1, 2), plan.received_slots().flatten(1), experts[l], hosts, coll.ranks).view_as(recv)
        x = plan.send_back(got, tag=f"exflow{l}_combine")
    return x


@torch.no_grad()
def coherent_forward(coll: Collective, x: torch.Tensor, trace: torch.Tensor, experts, placement) -> torch.Tensor:
    """The same stack with context-coherent dispatch: tokens continue from the GPU of their last expert."""
    n, t, h = x.shape
    p = coll.world_size
    ids = torch.tensor([[r * t + j for j in range(t)] for r in coll.ranks], dtype=torch.int32)  # (n, T)
    rows, valid = x, torch.ones(n, t, dtype=torch.bool)
    flat_trace = trace.reshape(p * t, -1)  # (P·T, L) the gate's choice of every token (computed where it is)
    for l in range(trace.shape[-1] + 1):
        if l < trace.shape[-1]:
            hosts = _hosts(np.asarray(placement[l]), p)
            table = _slot_table(hosts)
            ex = flat_trace[ids.clamp(min=0).long(), l]
            dest = torch.tensor([[table[int(e)][0] for e in row] for row in ex])
            slot = torch.tensor([[table[int(e)][1] for e in row] for row in ex])
            tag, num_slots = f"exflow{l}_dispatch", len(hosts[0])
        else:  # home
            dest, slot, tag, num_slots = ids.long() // t, torch.zeros_like(ids, dtype=torch.long), "exflow_home", 1
        dest, slot = torch.where(valid, dest, -1), torch.where(valid, slot, -1)
        plan = Plan(coll, dest, slot, num_slots=num_slots, tag=tag)
        recv = plan.send(rows).flatten(1, 2)  # (n, P·cap, h)
        recv_ids = plan.send(ids.unsqueeze(-1), tag=f"{tag}_ids").flatten(1, 2)[..., 0]
        got_slots = plan.received_slots().flatten(1)
        # compact: the received rows first, to the most any rank received (known from the counts)
        keep = int(plan.rows.sum(0).max())
        order = torch.argsort((got_slots < 0).int(), dim=1, stable=True)[:, :keep]
        rows, ids = recv.gather(1, order.unsqueeze(-1).expand(-1, -1, h)), recv_ids.gather(1, order)
        slots = got_slots.gather(1, order)
        valid = slots >= 0
        if l < trace.shape[-1]:
            rows = _layer(rows, slots, experts[l], hosts, coll.ranks)
    # home again: rows of rank i are its tokens, in whatever order they came back
    out = torch.zeros(n, t, h)
    for i, rank in enumerate(coll.ranks):
        j = ids[i][valid[i]].long() - rank * t
        out[i, j] = rows[i][valid[i]]
    coll.all_gather(out, tag="exflow_coherence")  # keep the replicated context coherent [UNVERIFIED model]
    return out


def planted_trace(num_tokens: int, num_layers: int, num_experts: int, *, stickiness: float, seed: int) -> np.ndarray:
    """(N, L) first-choice experts with planted affinity: layer l+1's expert is π_l(e_l) with probability
    `stickiness` (π_l a fixed random permutation), else uniform."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(num_experts) for _ in range(num_layers - 1)]
    out = np.empty((num_tokens, num_layers), dtype=np.int64)
    out[:, 0] = rng.integers(num_experts, size=num_tokens)
    for l in range(num_layers - 1):
        stick = rng.random(num_tokens) < stickiness
        out[:, l + 1] = np.where(stick, perms[l][out[:, l]], rng.integers(num_experts, size=num_tokens))
    return out
