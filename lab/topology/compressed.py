"""Compressed all-reduce as collective algorithms: their schedules, and which one a call uses.

A compressed payload does not sum in a dense all-reduce (sparse indices,
per-block scales, packed codes), so averaging compressed vectors is its own
op, `compressed_all_reduce`, with three algorithms (bytes per rank for an
encoded message of M bytes over P ranks; `Sizes` carries the exact bytes of
every chunk):

===========  ======================================================  ==================  ============
algorithm    what moves                                              bytes per rank      steps
===========  ======================================================  ==================  ============
all_gather   every rank's whole message, ring all-gather              (P-1) · M           P-1
two_phase    chunk j of every message to rank j (pairwise all-to-     2(P-1)/P · M        2(P-1)
             all); rank j decodes, reduces, re-encodes chunk j and
             the re-encoded chunks are ring all-gathered
star         parameter server: S = `server_shards` shards on ranks    busiest shard:      2
             0..S-1 (on a federated star, the server): chunk s to     (S-1 + P-1)/S · M
             shard s, the re-encoded reduced chunk back to every      (star topology:
             rank                                                     M up + M down)
===========  ======================================================  ==================  ============

Two-phase is the scheme of 1-bit Adam and ZeRO++'s qgZ (compressed
reduce-scatter by all-to-all, then an all-gather of the re-compressed
result; error feedback on both hops in `lab.compress.exchange`); its bytes are
the dense ring's factor times the compressed payload, where the all-gather's
grow with P.

Choosing follows the dense collectives (`lab.topology.model`): the topology's
`algorithm['compressed_all_reduce']` is 'auto' (the cheapest of `AUTO`, the
bandwidth-optimal family: two-phase, or the server on a federated star),
'cheapest' (the cheapest of every algorithm that applies) or a pinned name;
a pinned algorithm that does not apply to the compressor falls back to
'auto'. Which algorithms apply is the compressor's (`lab.compress.registry`:
chunked compressors all three, the others the all-gather). The Ledger
records the algorithm each call used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.topology.cost import Cost, Step, Traffic

OP = "compressed_all_reduce"
NAMES = ("all_gather", "two_phase", "star")
#: the bandwidth-optimal family 'auto' chooses among (on a federated star: the server)
AUTO = ("two_phase",)
AUTO_STAR = ("star",)
CHOICES = ("auto", "cheapest", *NAMES)


@dataclass(frozen=True)
class Sizes:
    """Encoded bytes of one rank's message in one exchange.

    full: the whole message (all-gather); chunks: (C,) bytes of its chunk c (two-phase C = P, star C = S);
    reduced: (C,) bytes of the re-encoded reduced chunk c that goes back.
    """

    full: float
    chunks: tuple = ()
    reduced: tuple = ()

    @classmethod
    def uniform(cls, m: float, num_chunks: int) -> Sizes:
        part = (m / num_chunks,) * num_chunks
        return cls(m, part, part)


def num_chunks(t, algorithm: str, p: int) -> int:
    """How many chunks a message is cut into for `algorithm` over p ranks."""
    if algorithm == "two_phase":
        return p
    if algorithm == "star":
        return 1 if t.star else min(t.server_shards, p)
    return 1


def _sizes(t, s, algorithm, p) -> Sizes:
    return Sizes.uniform(float(s), num_chunks(t, algorithm, p)) if not isinstance(s, Sizes) else s


def _step(pairs, nbytes, repeat=1):
    kept = [(a, b, m) for (a, b), m in zip(pairs, nbytes) if a != b]
    if not kept:
        return None
    return Step(np.array([a for a, _, _ in kept], dtype=np.int64), np.array([b for _, b, _ in kept], dtype=np.int64),
                np.array([m for _, _, m in kept], dtype=np.float64), repeat)


def _all_gather(t, s, ranks):
    s, p = _sizes(t, s, "all_gather", len(ranks)), len(ranks)
    if t.star:
        server = t.num_ranks
        return [_step([(r, server) for r in ranks], [s.full] * p),
                _step([(server, r) for r in ranks], [(p - 1) * s.full] * p)]
    nxt = ranks[1:] + ranks[:1]
    return [_step(list(zip(ranks, nxt)), [s.full] * p, repeat=p - 1)]


def _two_phase(t, s, ranks):
    p = len(ranks)
    if t.star or p < 2:
        return None
    s = _sizes(t, s, "two_phase", p)
    c, r = s.chunks, s.reduced
    steps = [_step([(ranks[i], ranks[(i + k) % p]) for i in range(p)], [c[(i + k) % p] for i in range(p)])
             for k in range(1, p)]  # pairwise all-to-all: in step k rank i sends chunk i+k to rank i+k
    nxt = [(ranks[i], ranks[(i + 1) % p]) for i in range(p)]
    if len(set(r)) == 1:
        steps.append(_step(nxt, [r[0]] * p, repeat=p - 1))
    else:  # ring all-gather: in step k rank i forwards chunk i-k
        steps += [_step(nxt, [r[(i - k) % p] for i in range(p)]) for k in range(p - 1)]
    return steps


def _star(t, s, ranks):
    p = len(ranks)
    s = _sizes(t, s, "star", p)
    if t.star:
        server = t.num_ranks
        return [_step([(r, server) for r in ranks], [sum(s.chunks)] * p),
                _step([(server, r) for r in ranks], [sum(s.reduced)] * p)]
    shards = ranks[:len(s.chunks)]
    push = [((r, q), s.chunks[j]) for r in ranks for j, q in enumerate(shards)]
    pull = [((q, r), s.reduced[j]) for j, q in enumerate(shards) for r in ranks]
    return [_step([a for a, _ in push], [m for _, m in push]), _step([a for a, _ in pull], [m for _, m in pull])]


#: the op's algorithms, as `lab.topology.algorithms.ALGORITHMS` holds the dense ones: (topology, Sizes or M,
#: participating ranks) -> steps, or None when the algorithm does not apply
COMPRESSED = {OP: {"all_gather": _all_gather, "two_phase": _two_phase, "star": _star}}


def factor(t, algorithm: str, p: int) -> float:
    """Bytes the busiest rank sends per byte of one rank's message under `algorithm` on p ranks (equal
    chunks): P-1 for the all-gather, 2(P-1)/P for two-phase, (S-1+P-1)/S for a star of S shards."""
    steps = COMPRESSED[OP][algorithm](t, 1e6, list(range(p)))
    if steps is None:
        return float("nan")
    return busiest(t.schedule_cost(steps, algorithm)) / 1e6


def busiest(cost: Cost) -> float:
    """Bytes the busiest rank sends in a call (all link classes; a star's downlink counted at the client)."""
    return float(sum(v for v in cost.bytes.values()).max()) if cost.bytes else 0.0


def ring_bytes(d_bytes: float, p: int) -> float:
    """Bytes per rank of the dense ring all-reduce of a d_bytes vector over p ranks: 2(P-1)/P · d_bytes."""
    return 2 * (p - 1) / p * d_bytes


def candidates(t, applicable: tuple, p: int) -> tuple:
    """The algorithms `t` would consider for a compressor whose `applicable` algorithms are given, in order:
    the pinned one if it applies, else 'auto''s family (falling back to every applicable one), or every
    applicable one for 'cheapest'."""
    usable = tuple(a for a in applicable if COMPRESSED[OP][a](t, 1.0, list(range(p))) is not None)
    choice = t.algorithm.get(OP, "auto")
    if choice in usable:
        return (choice,)
    if choice == "cheapest":
        return usable
    auto = tuple(a for a in (AUTO_STAR if t.star else AUTO) if a in usable)
    return auto or usable


def cost(t, algorithm: str, sizes: Sizes, ranks=None) -> Cost:
    """The Cost of one compressed all-reduce under `algorithm` with the given encoded sizes."""
    ranks = list(range(t.num_ranks)) if ranks is None else list(ranks)
    if len(ranks) <= 1:
        return Cost(0.0, algorithm, {k: np.zeros(t.num_ranks, dtype=np.int64) for k in
                                     ("intra", "inter", "uplink", "downlink")}, 0,
                    Traffic(t.num_ranks + 1))
    steps = COMPRESSED[OP][algorithm](t, sizes, ranks)
    assert steps is not None, f"{algorithm} does not apply on {ranks}"
    return t.schedule_cost(steps, algorithm)


def check(t, name: str) -> None:
    """ValueError unless `name` is a compressed all-reduce choice that applies on `t` (for config validation)."""
    if name not in CHOICES:
        raise ValueError(f"compress_algorithm={name!r} is invalid; allowed: {list(CHOICES)}")
    if name in NAMES and COMPRESSED[OP][name](t, 1.0, list(range(t.num_ranks))) is None and t.num_ranks > 1:
        raise ValueError(f"compress_algorithm={name!r} does not apply to topology={t.name!r} with "
                         f"{t.num_ranks} ranks ({t.description or t.shape})")
