"""The cost model: link classes, messages grouped in steps, and what a schedule of steps costs.

How a cost is computed. Every algorithm is written as a schedule of *steps*;
a step is a set of messages (src, dst, bytes) sent at the same time. Bytes per
rank and link class are summed from the messages, so they follow the
schedule, never a formula. A step lasts

    max α over its messages  +  max over network resources of (bytes crossing it / its bandwidth)

where the resources are each rank's send and receive side per link class (a
rank sending to three peers at once shares its NIC), each node's uplink and
downlink into the fabric (with `oversubscription` > 1 they carry less than
their ranks' NICs), the fabric as a whole (`fabric_bandwidth`), a torus's
directed links (messages are routed X then Y), and the clients' uplinks and
downlinks of a star (the server is not a bottleneck). A pipelined stage (a
tree or a chain streaming chunks) pays α once per hop of its depth instead;
that a pipelined stage costs its depth in α plus its busiest link's bytes is
a modelling choice, not a measured rule. The call's time is the sum over its
steps. The schedules give bytes and time only: the simulated collectives
still sum in ascending rank order (deterministic, comparable with gloo).

Link classes: ``intra`` (same node; on a torus, same row), ``inter``
(different nodes), ``uplink`` (client to server), ``downlink`` (server to
client, counted at the receiving client). The hierarchy is a list of levels
(`Topology.levels()`), innermost first, so a third level (racks, pods) is one
more entry and one more link class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINK_CLASSES = ("intra", "inter", "uplink", "downlink")


@dataclass(frozen=True)
class Link:
    """One link class: `latency_s` per message (α) and `bandwidth` in bytes/s (1/β)."""

    latency_s: float
    bandwidth: float

    def time(self, nbytes: float, *, messages: int = 1) -> float:
        return messages * self.latency_s + nbytes / self.bandwidth


@dataclass(frozen=True)
class Cost:
    """What one collective call costs: seconds, algorithm and bytes per rank per link class.

    `traffic` (optional) is the bytes sent from each rank to each rank over the
    call, a sparse `Traffic` over P+1 ranks (index P is the server of a star).
    """

    seconds: float
    algorithm: str
    bytes: dict  # link class -> np.ndarray (P,) int64, bytes each rank sends (downlink: receives)
    messages: int  # steps on the critical path (a pipelined stage counts its hops)
    traffic: Traffic | None = None


class Traffic:
    """Bytes sent from rank to rank: an n × n matrix (n = P + 1; index P: a star's server) held sparse, as
    the (src, dst, bytes) of the pairs that talked, sorted by src then dst, each pair once.

    Memory grows with the pairs that talked (P for a ring, 2P for a star), not with n². `toarray()` (and
    `np.asarray`, and indexing, which indexes the dense matrix) builds the n × n matrix: for small P only.
    """

    __slots__ = ("n", "src", "dst", "nbytes")

    def __init__(self, n: int, src=(), dst=(), nbytes=()):
        src, dst = np.asarray(src, dtype=np.int64).ravel(), np.asarray(dst, dtype=np.int64).ravel()
        nbytes = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src.shape)
        key, inv = np.unique(src * n + dst, return_inverse=True)  # sorted: by src, then dst
        total = np.bincount(inv.ravel(), weights=nbytes, minlength=key.size)
        keep = total != 0
        self.n, self.src, self.dst, self.nbytes = int(n), key[keep] // n, key[keep] % n, total[keep]
        for a in (self.src, self.dst, self.nbytes):
            a.flags.writeable = False

    @classmethod
    def concat(cls, parts) -> Traffic:
        """The sum of several Traffics of the same n."""
        parts = list(parts)
        assert parts and len({t.n for t in parts}) == 1, "Traffics of different sizes do not add up"
        return cls(parts[0].n, *(np.concatenate([getattr(t, a) for t in parts]) for a in ("src", "dst", "nbytes")))

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic.concat([self, other])

    def __radd__(self, other):  # sum([...]) starts from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def nnz(self) -> int:
        return int(self.src.size)

    def memory_bytes(self) -> int:
        return self.src.nbytes + self.dst.nbytes + self.nbytes.nbytes

    def sum(self) -> float:
        return float(self.nbytes.sum())

    def toarray(self) -> np.ndarray:
        out = np.zeros((self.n, self.n))
        out[self.src, self.dst] = self.nbytes
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.toarray()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        return self.toarray()[key]

    def __eq__(self, other) -> bool:
        return (isinstance(other, Traffic) and self.n == other.n and np.array_equal(self.src, other.src)
                and np.array_equal(self.dst, other.dst) and np.array_equal(self.nbytes, other.nbytes))

    __hash__ = None

    def __repr__(self) -> str:
        return f"Traffic(n={self.n}, pairs={self.nnz}, bytes={self.sum():.6g})"

    def state_dict(self) -> dict:
        return {"n": self.n, "src": self.src, "dst": self.dst, "nbytes": self.nbytes}

    @classmethod
    def from_state(cls, state: dict) -> Traffic:
        return cls(state["n"], state["src"], state["dst"], state["nbytes"])


def gbit(x: float) -> float:
    """Gigabits per second in bytes per second."""
    return x * 1e9 / 8


@dataclass
class Step:
    """Messages sent at once: src, dst (index P = the star's server), bytes each.

    `repeat` runs the same step that many times in a row (a ring's steps);
    `hops` > 1 marks a pipelined stage whose latency is paid once per hop.
    """

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    repeat: int = 1
    hops: int = 1

    @classmethod
    def of(cls, pairs, nbytes, *, repeat: int = 1, hops: int = 1) -> Step | None:
        pairs = [(s, d) for s, d in pairs if s != d]  # a message to oneself costs nothing
        if not pairs:
            return None
        src, dst = (np.array(v, dtype=np.int64) for v in zip(*pairs))
        b = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src.shape).copy()
        return cls(src, dst, b, repeat, hops)



def copy_cost(c: Cost) -> Cost:
    return Cost(c.seconds, c.algorithm, {k: v.copy() for k, v in c.bytes.items()}, c.messages,
                c.traffic)  # a Traffic is never changed in place: shared



# ---- the step engine ------------------------------------------------------------
def schedule_cost(t, steps, algorithm: str) -> Cost:
    """Bytes, traffic and seconds of a schedule (a list of Steps; None entries are skipped)."""
    p = t.num_ranks
    sent = np.zeros((len(LINK_CLASSES), p))
    pairs = []  # (src, dst, bytes) of every step, summed per pair by Traffic
    seconds, messages = 0.0, 0
    for s in steps:
        if s is None:
            continue
        cls = _classes(t, s.src, s.dst)  # (k,) index into LINK_CLASSES
        counted_at = np.where(s.src == p, s.dst, s.src)  # downlink bytes count at the receiving client
        np.add.at(sent, (cls, counted_at), s.nbytes * s.repeat)
        pairs.append((s.src, s.dst, s.nbytes * s.repeat))
        seconds += s.repeat * _step_seconds(t, s, cls)
        messages += s.repeat * s.hops
    b = {c: np.rint(sent[i]).astype(np.int64) for i, c in enumerate(LINK_CLASSES)}
    traffic = Traffic(p + 1, *(np.concatenate(v) for v in zip(*pairs))) if pairs else Traffic(p + 1)
    return Cost(seconds, algorithm, b, messages, traffic)


def _classes(t, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    p = t.num_ranks
    out = np.empty(src.shape, dtype=np.int64)
    inner = (src < p) & (dst < p)
    level = np.full(src.shape, len(t.levels()) - 1)
    for i, (_, size, _) in reversed(list(enumerate(t.levels()))):
        level = np.where(src // size == dst // size, i, level)
    names = [c for c, _, _ in t.levels()]
    out[inner] = np.array([LINK_CLASSES.index(n) for n in names])[level[inner]]
    out[dst == p] = LINK_CLASSES.index("uplink")
    out[src == p] = LINK_CLASSES.index("downlink")
    return out


def _step_seconds(t, s: Step, cls: np.ndarray) -> float:
    res, cap, lat = _resources(t, s.src, s.dst, cls)
    load = np.bincount(res[1], weights=s.nbytes[res[0]], minlength=cap.size)
    used = load > 0
    return s.hops * float(lat.max()) + float((load[used] / cap[used]).max())


def _resources(t, src, dst, cls):
    """((message index, resource index) arrays, capacities, per-message latency) for one step."""
    p, n = t.num_ranks, t.num_nodes
    links = [t.link(c) if c in ("intra", "inter") or t.star else None for c in LINK_CLASSES]
    alpha = np.array([l.latency_s if l is not None else 0.0 for l in links])
    if t.shape == "torus" and not t.star:
        return _torus_resources(t, src, dst)
    k = np.arange(src.size)
    # resource blocks: per-rank tx/rx for each of the 2 peer classes, node up/down, client up/down
    caps = [np.full(p, t.intra.bandwidth), np.full(p, t.intra.bandwidth),
            np.full(p, t.inter.bandwidth), np.full(p, t.inter.bandwidth),
            np.full(n, t.ranks_per_node * t.inter.bandwidth / t.oversubscription),
            np.full(n, t.ranks_per_node * t.inter.bandwidth / t.oversubscription)]
    if t.star:
        ups = t.client_uplinks or (t.uplink.bandwidth,) * p
        caps += [np.asarray(ups, dtype=float), np.full(p, t.downlink.bandwidth)]
    caps.append(np.array([t.fabric_bandwidth or np.inf]))
    base = np.cumsum([0] + [c.size for c in caps])
    msg, idx = [], []
    intra, inter = cls == 0, cls == 1
    for mask, (tx, rx) in ((intra, (0, 1)), (inter, (2, 3))):
        msg += [k[mask], k[mask]]
        idx += [base[tx] + src[mask], base[rx] + dst[mask]]
    msg += [k[inter], k[inter]]
    idx += [base[4] + src[inter] // t.ranks_per_node, base[5] + dst[inter] // t.ranks_per_node]
    if t.star:
        up, down = cls == 2, cls == 3
        msg += [k[up], k[down]]
        idx += [base[6] + src[up], base[7] + dst[down]]
    if t.fabric_bandwidth:
        msg.append(k[inter])
        idx.append(np.full(int(inter.sum()), base[-2]))
    res = (np.concatenate(msg), np.concatenate(idx))
    return res, np.concatenate(caps), alpha[cls]


def _torus_resources(t, src, dst):
    """Dimension-ordered routing on the X × Y torus (X = ranks_per_node): each hop is a directed link."""
    x_size, y_size = t.ranks_per_node, t.num_nodes
    routes = t._cache.setdefault("_routes", {})
    msg, idx, lat = [], [], np.empty(src.size)
    for i, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        route = routes.get((s, d))
        if route is None:
            hops, (sx, sy), (dx, dy) = [], (s % x_size, s // x_size), (d % x_size, d // x_size)
            for dim, size, (a, b) in ((0, x_size, (sx, dx)), (1, y_size, (sy, dy))):
                fwd = (b - a) % size
                step, count = (1, fwd) if fwd <= size - fwd else (-1, size - fwd)
                for _ in range(count):
                    node = sx + sy * x_size
                    hops.append(node * 4 + dim * 2 + (step < 0))
                    if dim == 0:
                        sx = (sx + step) % x_size
                    else:
                        sy = (sy + step) % y_size
                if dim == 0:
                    sx = dx
            nx = sum(1 for h in hops if (h % 4) < 2)
            route = (hops, nx * t.intra.latency_s + (len(hops) - nx) * t.inter.latency_s)
            routes[(s, d)] = route
        msg += [i] * len(route[0])
        idx += route[0]
        lat[i] = route[1]
    cap = np.empty(t.num_ranks * 4)
    cap[0::4] = cap[1::4] = t.intra.bandwidth
    cap[2::4] = cap[3::4] = t.inter.bandwidth
    return (np.array(msg, dtype=np.int64), np.array(idx, dtype=np.int64)), cap, lat
