"""Collective algorithms as message schedules, and which of them 'auto' chooses among.

Algorithms (bytes per rank for payload M over P ranks; `ALGORITHMS`):

===============  ====================  =======================================================  ==========
op               algorithm             bytes sent per rank                                      steps
===============  ====================  =======================================================  ==========
all_reduce       ring                  2(P-1)/P · M                                             2(P-1)
all_reduce       tree                  ≈ 2M (double binary tree, pipelined; halves of M)        2 stages
all_reduce       rhd                   2(P-1)/P · M (recursive halving-doubling, P = 2^k)        2 log2 P
all_reduce       hierarchical          intra 2(D-1)/D · M, inter 2(n-1)/n · M/D                 2(D-1)+2(n-1)
all_reduce       torus                 X-links 2(X-1)/X · M, Y-links 2(Y-1)/Y · M/X             2(X-1)+2(Y-1)
all_reduce       star                  M (S server shards on ranks 0..S-1; shards send (P-1)M/S)  2
all_gather       ring                  (P-1) · M        (M = one rank's chunk)                  P-1
all_gather       recursive_doubling    (P-1) · M        (P = 2^k)                               log2 P
reduce_scatter   ring                  (P-1)/P · M      (M = the full input)                    P-1
reduce_scatter   recursive_halving     (P-1)/P · M      (P = 2^k)                               log2 P
reduce_scatter   via_all_reduce        2(P-1)/P · M     (a ring all-reduce, then keep a chunk)  2(P-1)
broadcast        pipelined_chain       M (every rank but the last)                              1 stage
broadcast        binomial_tree         M per child, log2 P rounds                               ⌈log2 P⌉
all_to_all       pairwise              (P-1)/P · M      (M = the send buffer; one peer a step)  P-1
all_to_all       direct                (P-1)/P · M      (every peer at once)                    1
all_to_all       bruck                 Σ_k |{j: bit k of j}| · M/P                              ⌈log2 P⌉
===============  ====================  =======================================================  ==========

Each builder takes (topology, payload M, participating ranks in order) and
returns a list of `Step`s, or None when the algorithm does not apply; the
topology costs the schedule (`Topology.schedule_cost`).
"""
from __future__ import annotations

from dataclasses import replace

from lab.topology.cost import Step


def _ring(t, m, ranks, *, chunk, repeat):
    nxt = ranks[1:] + ranks[:1]
    return [Step.of(zip(ranks, nxt), chunk, repeat=repeat)]


def _is_pow2(p: int) -> bool:
    return p >= 2 and p & (p - 1) == 0


def _halving(ranks, m):
    """Recursive halving: partner i XOR d for d = P/2, ..., 1; half of what is left each step."""
    p, steps, size = len(ranks), [], m
    d = p // 2
    while d >= 1:
        size /= 2
        steps.append(Step.of([(ranks[i], ranks[i ^ d]) for i in range(p)], size))
        d //= 2
    return steps


def _doubling(ranks, chunk):
    """Recursive doubling: partner i XOR d for d = 1, 2, ...; what is held doubles each step."""
    p, steps, size, d = len(ranks), [], chunk, 1
    while d < p:
        steps.append(Step.of([(ranks[i], ranks[i ^ d]) for i in range(p)], size))
        size *= 2
        d *= 2
    return steps


def _two_level(t, m, ranks):
    """Reduce-scatter inside each group of the inner level, all-reduce across groups on M/D, all-gather inside.

    Applies when the participants are complete groups of an inner level: D >= 2 ranks in each of n >= 2 nodes
    (on a torus: rows of X ranks, n rows).
    """
    by_node: dict[int, list[int]] = {}
    for r in ranks:
        by_node.setdefault(t.node_of(r), []).append(r)
    sizes = {len(v) for v in by_node.values()}
    if len(by_node) < 2 or len(sizes) != 1 or sizes.pop() < 2:
        return None
    nodes = [by_node[k] for k in sorted(by_node)]
    d, n = len(nodes[0]), len(nodes)
    inside = [(g[i], g[(i + 1) % d]) for g in nodes for i in range(d)]
    across = [(nodes[j][i], nodes[(j + 1) % n][i]) for i in range(d) for j in range(n)]
    return [Step.of(inside, m / d, repeat=d - 1), Step.of(across, m / (d * n), repeat=2 * (n - 1)),
            Step.of(inside, m / d, repeat=d - 1)]


def _hierarchical(t, m, ranks):
    return None if t.shape == "torus" else _two_level(t, m, ranks)


def _torus(t, m, ranks):
    return _two_level(t, m, ranks) if t.shape == "torus" and len(ranks) == t.num_ranks else None


def _binary_tree(p: int, shift: int = 0) -> tuple[list[tuple[int, int]], int]:
    """(child, parent) position pairs of an in-order binary tree over positions 0..P-1 (rotated by
    `shift`), and its depth in edges."""
    edges, depth = [], 0

    def build(lo, hi, parent, level):
        nonlocal depth
        if lo > hi:
            return
        mid = (lo + hi) // 2
        if parent is not None:
            edges.append(((mid + shift) % p, (parent + shift) % p))
            depth = max(depth, level)
        build(lo, mid - 1, mid, level + 1)
        build(mid + 1, hi, mid, level + 1)

    build(0, p - 1, None, 0)
    return edges, depth


def _tree(t, m, ranks):
    """Double binary tree (two trees, each carrying half of M; the second is the first shifted by one
    position so most ranks are interior in one tree and a leaf in the other), pipelined: a reduce stage up
    both trees, then a broadcast stage down."""
    p = len(ranks)
    if p < 3:
        return None
    up, depth = [], 0
    for shift in (0, 1):
        edges, dep = _binary_tree(p, shift)
        up += [(ranks[c], ranks[q]) for c, q in edges]
        depth = max(depth, dep)
    down = [(q, c) for c, q in up]
    return [Step.of(up, m / 2, hops=depth), Step.of(down, m / 2, hops=depth)]


def _rhd(t, m, ranks):
    if not _is_pow2(len(ranks)):
        return None
    halves = _halving(ranks, m)
    return halves + [replace(s) for s in reversed(halves)]  # the all-gather mirrors the reduce-scatter


def _star_ps(t, m, ranks):
    """Parameter server: `server_shards` S shards live on the first S participants; every rank pushes M/S to
    each shard, each shard pushes its reduced M/S back to every rank."""
    s = min(t.server_shards, len(ranks))
    shards = ranks[:s]
    push = [(r, q) for r in ranks for q in shards]
    pull = [(q, r) for q in shards for r in ranks]
    return [Step.of(push, m / s), Step.of(pull, m / s)]


def _via_all_reduce(t, m, ranks):
    p = len(ranks)
    return _ring(t, m, ranks, chunk=m / p, repeat=2 * (p - 1))


def _binomial(t, m, ranks):
    """Position i < 2^k sends M to i + 2^k in round k; the root is the first participant."""
    p, steps, k = len(ranks), [], 1
    while k < p:
        steps.append(Step.of([(ranks[i], ranks[i + k]) for i in range(k) if i + k < p], m))
        k *= 2
    return steps


def _chain(t, m, ranks):
    p = len(ranks)
    return [Step.of(zip(ranks[:-1], ranks[1:]), m, hops=p - 1)]


def _pairwise(t, m, ranks):
    p = len(ranks)
    return [Step.of([(ranks[i], ranks[(i + k) % p]) for i in range(p)], m / p) for k in range(1, p)]


def _direct(t, m, ranks):
    p = len(ranks)
    return [Step.of([(a, b) for a in ranks for b in ranks], m / p)]


def _bruck(t, m, ranks):
    """Bruck: in round k every rank sends the blocks whose index has bit k set to the rank 2^k ahead."""
    p, steps, k = len(ranks), [], 0
    while (1 << k) < p:
        blocks = sum(1 for j in range(p) if j >> k & 1)
        steps.append(Step.of([(ranks[i], ranks[(i + (1 << k)) % p]) for i in range(p)], blocks * m / p))
        k += 1
    return steps


ALGORITHMS = {
    "all_reduce": {"ring": lambda t, m, r: _ring(t, m, r, chunk=m / len(r), repeat=2 * (len(r) - 1)),
                   "hierarchical": _hierarchical, "torus": _torus, "tree": _tree, "rhd": _rhd, "star": _star_ps},
    "all_gather": {"ring": lambda t, m, r: _ring(t, m, r, chunk=m, repeat=len(r) - 1),
                   "recursive_doubling": lambda t, m, r: _doubling(r, m) if _is_pow2(len(r)) else None},
    "reduce_scatter": {"ring": lambda t, m, r: _ring(t, m, r, chunk=m / len(r), repeat=len(r) - 1),
                       "recursive_halving": lambda t, m, r: _halving(r, m) if _is_pow2(len(r)) else None,
                       "via_all_reduce": _via_all_reduce},
    "broadcast": {"pipelined_chain": _chain, "binomial_tree": _binomial},
    "all_to_all": {"pairwise": _pairwise, "direct": _direct, "bruck": _bruck},
}
#: what 'auto' chooses among: the bandwidth-optimal schedules a library defaults to
AUTO = {"all_reduce": ("ring", "hierarchical", "torus"), "all_gather": ("ring",), "reduce_scatter": ("ring",),
        "broadcast": ("pipelined_chain",), "all_to_all": ("pairwise",)}


def algorithm_table(t, op: str, sizes, algorithms=None):
    """Seconds, steps and bytes per rank of `op` under each applicable algorithm, for each payload size."""
    import pandas as pd

    rows = []
    for name in algorithms or ALGORITHMS[op]:
        for m in sizes:
            steps = ALGORITHMS[op][name](t, float(m), list(range(t.num_ranks)))
            if steps is None:
                continue
            c = t.schedule_cost(steps, name)
            per_rank = sum(v for v in c.bytes.values())
            rows.append({"topology": t.name, "ranks": t.num_ranks, "op": op, "algorithm": name, "bytes": int(m),
                         "seconds": c.seconds, "steps": c.messages, "max_bytes_per_rank": int(per_rank.max()),
                         "inter_bytes_per_rank": int(c.bytes["inter"].max())})
    return pd.DataFrame(rows)
