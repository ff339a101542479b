"""What one attention layer of each sequence-parallel method costs on a topology, at any size.

`layer_schedule(...)` writes a method's forward or backward as stages. A stage is the messages sent at
once (point-to-point pairs, or a collective inside groups) with the payload each rank sends — the same
payloads the implementations hand the Collective, so the bytes per rank and the Ledger's seconds of a
real run equal these (tested) — plus the attention FLOPs each rank computes in it (4·Dh per visible
(query, key) pair forward, 10·Dh backward: the score recomputation, dV, dP, dQ, dK).

`layer_cost(...)` turns a schedule into numbers: bytes per rank, `comm_seconds` (the sum over calls, as
the Ledger adds them), `compute_seconds` (the busiest rank per stage at the topology's device FLOP/s)
and `sim_seconds`, where a ring step overlaps its messages with its block's compute
(max(compute, comm), the double-buffering every ring implementation uses) and a collective does not
(compute + comm). The overlap model is a modelling choice [RECON], not a measurement. A stage's
concurrent point-to-point streams (TokenRing's Q and partial outputs) share each rank's NIC as the
topology's step engine says.

Sizes are free here (N = 1M tokens is fine): nothing is allocated. `bytes_per_element` b is the
activation dtype on the wire; lse, D and gradient accumulators travel in fp32 as the implementations do.
`kv_heads` < heads (grouped-query attention) changes what K/V messages weigh; the implementations in
this package are multi-head (kv_heads = heads).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lab.comm.collective import group_cost
from lab.sequence.layout import check_layout
from lab.topology import Step

SCHEDULED = ("ring", "token_ring", "ulysses", "usp", "burst", "lss", "lasp")


@dataclass
class Stage:
    name: str
    #: ('p2p', pairs, nbytes) or (op, groups, payload_bytes) with op a Collective operation
    ops: list = field(default_factory=list)
    flops: np.ndarray | None = None  # (P,) per rank
    overlap: bool = False


def intervals(num_tokens: int, group_size: int, layout: str) -> list[list[tuple[int, int]]]:
    """Per group position, its tokens as half-open intervals of positions."""
    check_layout(layout, num_tokens, group_size)
    g = group_size
    if layout == "contiguous":
        c = num_tokens // g
        return [[(i * c, (i + 1) * c)] for i in range(g)]
    c = num_tokens // (2 * g)
    return [[(i * c, (i + 1) * c), ((2 * g - 1 - i) * c, (2 * g - i) * c)] for i in range(g)]


def _causal_pairs(a, b, c, d) -> int:
    """#(i, j) with i in [a, b), j in [c, d), i >= j."""
    lo, hi = max(a, c), min(b, d)
    inside = (hi - lo) * (lo - c + 1 + hi - c) // 2 if hi > lo else 0
    return inside + max(0, b - max(a, d)) * (d - c)


def pair_counts(q_sets, k_sets, *, causal: bool) -> np.ndarray:
    """(len(q_sets), len(k_sets)) visible (query, key) pairs between token sets (lists of intervals)."""
    out = np.zeros((len(q_sets), len(k_sets)), dtype=np.float64)
    for i, qs in enumerate(q_sets):
        for j, ks in enumerate(k_sets):
            if causal:
                out[i, j] = sum(_causal_pairs(a, b, c, d) for a, b in qs for c, d in ks)
            else:
                out[i, j] = sum(b - a for a, b in qs) * sum(d - c for c, d in ks)
    return out


def _ring_pairs(rings, offset=1):
    return [(r[i], r[(i + offset) % len(r)]) for r in rings for i in range(len(r))]


def layer_schedule(method: str, *, batch: int, seq: int, heads: int, head_dim: int, world: int,
                   groups=None, causal: bool = True, layout: str = "contiguous", bytes_per_element: int = 4,
                   kv_heads: int = 0, ulysses_degree: int = 1, state_dim: int = 0, backward: bool = False):
    """The stages of one layer's forward (or backward) of `method`; see the module docstring."""
    if method not in SCHEDULED:
        raise ValueError(f"sp_method={method!r} has no schedule: expected one of {list(SCHEDULED)}")
    groups = groups or [list(range(world))]
    g, b, e = len(groups[0]), batch, bytes_per_element
    hk = kv_heads or heads
    c = seq // g
    tok = intervals(seq, g, layout if method != "lasp" else "contiguous")
    fpp = (10 if backward else 4) * head_dim  # FLOPs per visible pair per head
    stages: list[Stage] = []

    def flops_at(per_position):  # (G,) by group position -> (P,) by rank
        f = np.zeros(world)
        for grp in groups:
            f[grp] = per_position
        return f

    if method in ("ring", "burst", "token_ring"):
        pairs = pair_counts(tok, tok, causal=causal)  # [query position, key position]
        kv = 2 * b * hk * c * head_dim * e
        q_msg = b * heads * c * head_dim * e
        bundle = b * heads * c * (2 * head_dim * e + 2 * 4)  # Q, dO, lse, D
        for s in range(g):
            src = [(i - s) % g for i in range(g)]
            if method == "token_ring":  # rank i computes the queries of owner i − s against its own keys
                work = np.array([pairs[src[i], i] for i in range(g)])
            elif method == "burst" and backward:
                work = np.array([pairs[src[i], i] for i in range(g)])
            else:
                work = np.array([pairs[i, src[i]] for i in range(g)])
            ops = []
            if method == "ring" or (method == "burst" and not backward):
                if s < g - 1:
                    ops.append(("p2p", _ring_pairs(groups), kv))
                if backward:
                    ops.append(("p2p", _ring_pairs(groups), 2 * b * hk * c * head_dim * 4))
            elif method == "burst":
                if s < g - 1:
                    ops.append(("p2p", _ring_pairs(groups), bundle))
                ops.append(("p2p", _ring_pairs(groups), b * heads * c * head_dim * 4))
            elif s > 0:  # token_ring: Q (or the backward bundle) one hop on, partials s hops back
                ops.append(("p2p", _ring_pairs(groups), bundle if backward else q_msg))
                back = b * heads * c * head_dim * 4 if backward else b * heads * c * (head_dim * e + 4)
                ops.append(("p2p", _ring_pairs(groups, -s), back))
            stages.append(Stage(f"{method} step {s}", ops, flops_at(work * b * heads * fpp), overlap=True))
        return stages

    if method in ("ulysses", "usp"):
        u = g if method == "ulysses" else ulysses_degree
        if g % u or heads % u:
            raise ValueError(f"ulysses_degree={u!r} is invalid: expected a divisor of the SP group ({g}) and of "
                             f"heads ({heads})")
        r = g // u
        a2a = [grp[i:i + u] for grp in groups for i in range(0, g, u)]
        rings = [[grp[j * u + i] for j in range(r)] for grp in groups for i in range(u)]
        seg = [[iv for p in range(k * u, (k + 1) * u) for iv in tok[p]] for k in range(r)]
        pairs = pair_counts(seg, seg, causal=causal)  # [query segment, key segment]
        qkv = (heads + 2 * hk) * b * c * head_dim * e
        one = b * heads * c * head_dim * e  # O or dO
        first, last = ("all_to_all", a2a, one if backward else qkv), ("all_to_all", a2a, qkv if backward else one)
        stages.append(Stage(f"{method} all-to-all in", [first]))
        kv = 2 * b * (hk // u) * (c * u) * head_dim * e
        for s in range(r):
            work = np.array([pairs[k, (k - s) % r] for k in range(r)])
            ops = [("p2p", _ring_pairs(rings), kv)] if s < r - 1 else []
            if backward and r > 1:
                ops.append(("p2p", _ring_pairs(rings), 2 * b * (hk // u) * (c * u) * head_dim * 4))
            per_pos = np.repeat(work, u)
            stages.append(Stage(f"{method} attention step {s}", ops, flops_at(per_pos * b * (heads // u) * fpp),
                                overlap=True))
        stages.append(Stage(f"{method} all-to-all out", [last]))
        return stages

    if method == "lss":
        allk = [[iv for t in tok for iv in t]]
        work = pair_counts(tok, allk, causal=causal)[:, 0]
        kv = 2 * b * hk * c * head_dim * e
        gather = (("reduce_scatter", groups, g * 2 * b * hk * c * head_dim * 4) if backward
                  else ("all_gather", groups, kv))
        comp = Stage("lss attention", [], flops_at(work * b * heads * fpp))
        return [comp, Stage("lss reduce-scatter dK/dV", [gather])] if backward else [
            Stage("lss all-gather K/V", [gather]), comp]

    # lasp: the state chain, one hop per stage, nothing to overlap it with in this model
    d = head_dim
    ev = state_dim or head_dim
    intra = b * heads * (2 * c * c * (d + ev) + 4 * c * d * ev) * (2 if backward else 1)
    stages.append(Stage("lasp local", [], flops_at(np.full(g, intra))))
    hops = range(g - 1, 0, -1) if backward else range(g - 1)
    for hop in hops:
        pairs = [(grp[hop], grp[hop - 1] if backward else grp[hop + 1]) for grp in groups]
        stages.append(Stage(f"lasp hop {hop}", [("p2p", pairs, b * heads * d * ev * 4)]))
    return stages


def _op_cost(topology, op):
    kind, who, nbytes = op
    if kind == "p2p":
        return topology.peer_cost(who, nbytes, "send_recv")
    if len(who) == 1:
        return topology.cost(kind, nbytes, ranks=None if len(who[0]) == topology.num_ranks else who[0])
    return group_cost(topology, kind, nbytes, who)


def layer_cost(method: str, *, topology, **shape) -> dict:
    """Bytes per rank, communication, compute and simulated seconds of one layer, forward and backward.
    `shape`: the keyword arguments of `layer_schedule` except `world` and `backward`."""
    out = {"method": method}
    for direction in ("fwd", "bwd"):
        stages = layer_schedule(method, world=topology.num_ranks, backward=direction == "bwd", **shape)
        sent = np.zeros(topology.num_ranks)
        comm = comp = sim = 0.0
        for st in stages:
            costs = [_op_cost(topology, op) for op in st.ops]
            for cst in costs:
                sent += sum(cst.bytes.values())
            seq_comm = sum(cst.seconds for cst in costs)
            p2p = [op for op in st.ops if op[0] == "p2p"]
            conc = _concurrent_seconds(topology, p2p) + sum(cst.seconds for op, cst in zip(st.ops, costs)
                                                             if op[0] != "p2p")
            c_sec = float(np.max(st.flops)) / topology.device_flops if st.flops is not None else 0.0
            comm += seq_comm
            comp += c_sec
            sim += max(c_sec, conc) if st.overlap else c_sec + conc
        out.update({f"bytes_{direction}": sent, f"comm_seconds_{direction}": comm,
                    f"compute_seconds_{direction}": comp, f"sim_seconds_{direction}": sim})
    out["bytes_per_rank"] = float(np.max(out["bytes_fwd"] + out["bytes_bwd"]))
    out["sim_seconds"] = out["sim_seconds_fwd"] + out["sim_seconds_bwd"]
    out["comm_seconds"] = out["comm_seconds_fwd"] + out["comm_seconds_bwd"]
    out["compute_seconds"] = out["compute_seconds_fwd"] + out["compute_seconds_bwd"]
    return out


def _concurrent_seconds(topology, p2p_ops) -> float:
    """Seconds of point-to-point streams sent at once (one step of the topology's engine)."""
    pairs, sizes = [], []
    for _, who, nbytes in p2p_ops:
        for s, d in who:
            if s != d:
                pairs.append((s, d))
                sizes.append(nbytes)
    if not pairs:
        return 0.0
    if topology.star:
        return sum(topology.peer_cost(who, nbytes, "send_recv").seconds for _, who, nbytes in p2p_ops)
    step = Step.of(pairs, np.asarray(sizes, dtype=float))
    return topology.schedule_cost([step], "p2p").seconds


def sweep(methods, seq_lengths, topologies, *, batch: int = 1, heads: int = 32, head_dim: int = 128,
          kv_heads: int = 0, bytes_per_element: int = 2, causal: bool = True, layout: str = "zigzag"):
    """One row per (topology, sequence length, method): bytes per rank, communication, compute and simulated
    seconds of one attention layer (forward + backward) over every rank of the topology, and the layer's
    activation bytes per rank (`lab.sequence.memory`). `topologies` are Topology objects. Combinations a
    method cannot run (heads not divisible by its all-to-all group) are left out."""
    import pandas as pd

    from lab.sequence.memory import activation_bytes

    rows = []
    for t in topologies:
        for n in seq_lengths:
            for m in methods:
                u = min(t.ranks_per_node, t.num_ranks)
                if (m == "ulysses" and heads % t.num_ranks) or (m == "usp" and heads % u):
                    continue
                c = layer_cost(m, topology=t, batch=batch, seq=n, heads=heads, head_dim=head_dim, kv_heads=kv_heads,
                               bytes_per_element=bytes_per_element, causal=causal, layout=layout, ulysses_degree=u)
                mem = activation_bytes(batch=batch, seq=n, hidden=heads * head_dim, layers=1, heads=heads,
                                       sp_degree=t.num_ranks, method=m, bytes_per_element=bytes_per_element)
                rows.append({"topology": t.name, "ranks": t.num_ranks, "seq": n, "method": m,
                             "bytes_per_rank": c["bytes_per_rank"], "comm_seconds": c["comm_seconds"],
                             "compute_seconds": c["compute_seconds"], "sim_seconds": c["sim_seconds"],
                             "activation_bytes": mem})
    return pd.DataFrame(rows)
