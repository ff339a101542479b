"""Gossip graphs: mixing matrices for decentralized averaging, their spectral gaps and consensus curves.

Decentralized training replaces the all-reduce by neighbour averaging
x ← W x, with W an (n, n) doubly stochastic mixing matrix on a graph: rank i
receives x_j from every j with W[i, j] != 0 and keeps the weighted sum. How
fast repeated mixing reaches the average is set by the second-largest
eigenvalue modulus |λ₂| of W; the spectral gap is 1 − |λ₂| (spec:
shared/techniques/sharding_and_topology.md §B20).

Graphs (`GRAPHS`) and what each rank sends per round (deg · |x|):

====================  =========================================================  ===========================
graph                 neighbours of rank i, weights                              degree
====================  =========================================================  ===========================
ring                  i ± 1, all weights 1/3 (gap 1 − (1 + 2 cos(2π/n)) / 3)      2
torus                 the 4 grid neighbours of an X × Y torus, weights 1/5        4 (fewer if X or Y < 3)
exponential           i + 2^k mod n for 2^k < n, uniform 1/(τ+1) incl. self      τ = ⌈log2 n⌉ (gap 2/(1+τ)
                                                                                 for n = 2^τ)
one_peer_exponential  round t: i + 2^(t mod τ), weights ½ (time-varying)          1 (exact average after τ
                                                                                 rounds for n = 2^τ)
random_regular        a random d-regular graph (seeded), weights 1/(d+1)          d (`degree`)
complete              everyone, weights 1/n                                      n − 1
====================  =========================================================  ===========================

Undirected graphs use Metropolis–Hastings weights W_ij = 1/(1 + max(d_i, d_j)),
which for a d-regular graph are the uniform 1/(d+1) above. The exponential
graphs are directed (i receives from i + 2^k) and circulant, hence doubly
stochastic. Papers: Lian et al. 2017 (D-PSGD); Ying et al. 2021, "Exponential
Graph is Provably Efficient for Decentralized Deep Training" (the exponential
and one-peer exponential graphs).
"""
from __future__ import annotations

import math

import numpy as np

GRAPHS = ("ring", "torus", "exponential", "one_peer_exponential", "random_regular", "complete")
TIME_VARYING = ("one_peer_exponential",)


def _metropolis(n: int, edges: set[tuple[int, int]]) -> np.ndarray:
    """Doubly stochastic weights on an undirected graph: 1/(1 + max(deg_i, deg_j)) per edge."""
    nbrs = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            nbrs[a].add(b)
            nbrs[b].add(a)
    w = np.zeros((n, n))
    for i in range(n):
        for j in nbrs[i]:
            w[i, j] = 1.0 / (1 + max(len(nbrs[i]), len(nbrs[j])))
        w[i, i] = 1.0 - w[i].sum()
    return w


def torus_shape(n: int) -> tuple[int, int]:
    """X × Y = n with X the largest divisor of n not above √n (X = 1 for primes: a ring)."""
    x = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return x, n // x


def hops(n: int) -> int:
    """τ = ⌈log2 n⌉: the exponential graph's out-degree and the one-peer graph's period."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _random_regular_edges(n: int, degree: int, seed: int) -> set[tuple[int, int]]:
    """A uniformly drawn simple d-regular graph by the pairing model (redrawn until simple)."""
    if not 1 <= degree < n or (n * degree) % 2:
        raise ValueError(f"graph_degree={degree!r} is invalid for graph='random_regular' with {n} ranks: it needs "
                         f"1 <= degree < {n} and degree × ranks even")
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        stubs = rng.permutation(np.repeat(np.arange(n), degree))
        pairs = stubs.reshape(-1, 2)
        edges = {(min(a, b), max(a, b)) for a, b in pairs.tolist()}
        if len(edges) == len(pairs) and all(a != b for a, b in edges):
            return edges
    raise ValueError(f"could not draw a simple {degree}-regular graph on {n} ranks; try another graph_degree")


def mixing_matrix(graph: str, n: int, *, t: int = 0, degree: int = 4, seed: int = 0) -> np.ndarray:
    """The (n, n) float64 mixing matrix of `graph` on n ranks at gossip round `t` (only the one-peer graph
    changes with t). Row i holds the weights rank i gives to what it receives."""
    if graph not in GRAPHS:
        raise ValueError(f"graph={graph!r} is unknown; allowed: {list(GRAPHS)}")
    if n < 1:
        raise ValueError(f"n={n!r} is invalid: a graph needs at least 1 rank")
    if n == 1:
        return np.ones((1, 1))
    i = np.arange(n)
    if graph == "ring":
        return _metropolis(n, {(a, (a + 1) % n) for a in range(n)})
    if graph == "torus":
        x, y = torus_shape(n)
        edges = {(a, (a // x) * x + (a % x + 1) % x) for a in range(n)} | {(a, (a + x) % n) for a in range(n)}
        return _metropolis(n, edges)
    if graph == "complete":
        return np.full((n, n), 1.0 / n)
    if graph == "random_regular":
        return _metropolis(n, _random_regular_edges(n, degree, seed))
    tau = hops(n)
    w = np.zeros((n, n))
    if graph == "exponential":
        shifts = sorted({2 ** k % n for k in range(tau)} - {0})
        for s in [0] + shifts:
            w[i, (i + s) % n] += 1.0 / (len(shifts) + 1)
        return w
    s = 2 ** (t % tau) % n  # one_peer_exponential
    w[i, i] += 0.5
    w[i, (i + s) % n] += 0.5
    return w


def spectral_gap(w: np.ndarray) -> float:
    """1 − |λ₂|: one minus the second-largest eigenvalue modulus of a mixing matrix."""
    moduli = np.sort(np.abs(np.linalg.eigvals(np.asarray(w, dtype=float))))[::-1]
    return float(1.0 - moduli[1]) if moduli.size > 1 else 1.0


def ring_gap(n: int) -> float:
    """Closed form for the ring with weights 1/3: 1 − (1 + 2 cos(2π/n)) / 3 (n >= 3)."""
    return 1.0 - (1.0 + 2.0 * math.cos(2.0 * math.pi / n)) / 3.0


def degree_of(w: np.ndarray) -> np.ndarray:
    """(n,) how many others each rank sends to (column j's nonzeros off the diagonal)."""
    nz = np.asarray(w) != 0
    np.fill_diagonal(nz, False)
    return nz.sum(axis=0)


def consensus_curve(graph: str, n: int, rounds: int, *, degree: int = 4, seed: int = 0) -> np.ndarray:
    """(rounds + 1,) consensus distance ‖x_t − x̄‖ / ‖x_0 − x̄‖ of pure gossip from a random start (float64)."""
    x = np.random.default_rng(seed).standard_normal(n)
    dev0 = np.linalg.norm(x - x.mean())
    out = [1.0]
    for t in range(rounds):
        x = mixing_matrix(graph, n, t=t, degree=degree, seed=seed) @ x
        out.append(float(np.linalg.norm(x - x.mean()) / dev0))
    return np.array(out)


def describe(graph: str, n: int, *, degree: int = 4, seed: int = 0) -> dict:
    """Spectral gap (over one period for time-varying graphs), degree and bytes factor of `graph` on n ranks."""
    if graph in TIME_VARYING:
        period = hops(n)
        w = np.eye(n)
        for t in range(period):
            w = mixing_matrix(graph, n, t=t) @ w
        gap, deg = spectral_gap(w), 1
    else:
        w = mixing_matrix(graph, n, degree=degree, seed=seed)
        period, gap, deg = 1, spectral_gap(w), int(degree_of(w).max())
    return {"graph": graph, "ranks": n, "spectral_gap": gap, "period": period, "degree": deg}
