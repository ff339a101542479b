"""Topology: ranks on nodes, link classes, and what a collective costs under each algorithm.

A `Topology` says which ranks share a node, what each link class costs
(latency α in seconds per message, bandwidth in bytes per second, β = 1/bw),
how the nodes are wired (a switch with optional oversubscription, a 2D torus,
or a federated star around a server) and how fast each rank computes.
`Topology.cost(op, payload_bytes, ranks=...)` returns a `Cost`: the bytes each
rank sends on each link class, the seconds of one call, the algorithm used and
the messages on its critical path (ref. shared/techniques/sharding_and_topology.md
§0.2, §B1).

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

`shift`/`mix` (gossip) are point-to-point (`peer_cost`), and the federated ops
`server_gather`/`server_broadcast` go through a star's server (or rank 0 when
the topology has no server). On a federated star every collective goes through
the server: clients upload, the server combines, then sends back.

Choosing. Per op, `algorithm` maps to a name (pinned), to 'auto' (the cheapest
of `AUTO`, the bandwidth-optimal family a library such as NCCL defaults to:
ring vs hierarchical vs torus for all-reduce) or to 'cheapest' (the cheapest of
every algorithm that applies, latency-optimal trees and recursive
halving-doubling included). A pinned algorithm that does not apply to a call
(e.g. rhd on 6 ranks, hierarchical inside one node) falls back to 'auto'; the
Ledger records the algorithm each call used.

Link classes: ``intra`` (same node; on a torus, same row), ``inter``
(different nodes), ``uplink`` (client to server), ``downlink`` (server to
client, counted at the receiving client). The hierarchy is a list of levels
(`Topology.levels()`), innermost first, so a third level (racks, pods) is one
more entry and one more link class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType

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

    `traffic` (optional) is the (P+1, P+1) matrix of bytes sent from each rank to
    each rank over the call; index P is the server of a star.
    """

    seconds: float
    algorithm: str
    bytes: dict  # link class -> np.ndarray (P,) int64, bytes each rank sends (downlink: receives)
    messages: int  # steps on the critical path (a pipelined stage counts its hops)
    traffic: np.ndarray | None = None


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
    def of(cls, pairs, nbytes, *, repeat: int = 1, hops: int = 1) -> "Step | None":
        pairs = [(s, d) for s, d in pairs if s != d]  # a message to oneself costs nothing
        if not pairs:
            return None
        src, dst = (np.array(v, dtype=np.int64) for v in zip(*pairs))
        b = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src.shape).copy()
        return cls(src, dst, b, repeat, hops)


@dataclass(frozen=True)
class Topology:
    """Ranks on nodes with two link classes, a wiring shape, and per-rank compute.

    Knobs: `num_ranks`, `ranks_per_node` (D), the `intra`/`inter` links,
    `oversubscription` (node uplinks carry D·inter/oversubscription), `shape`
    ('switch' or 'torus': nodes are the rows of a ranks_per_node × num_nodes
    torus), `star` with `uplink`/`downlink` (and per-client `client_uplinks`
    bandwidths), `server_shards` for the parameter-server ('star') all-reduce,
    `device_flops` (sustained FLOP/s of one rank) and `rank_speed` (relative
    speed per rank, for stragglers), and `algorithm` (op -> name, 'auto' or
    'cheapest'; see the module docstring), `fabric_bandwidth` (what the
    switching fabric forwards in total between nodes: a blocking switch).
    """

    name: str
    num_ranks: int
    ranks_per_node: int
    intra: Link
    inter: Link
    device_flops: float
    star: bool = False
    uplink: Link | None = None
    downlink: Link | None = None
    description: str = ""
    device: str = ""
    oversubscription: float = 1.0
    shape: str = "switch"
    server_shards: int = 1
    client_uplinks: tuple | None = None  # (P,) uplink bandwidth per client, bytes/s
    fabric_bandwidth: float | None = None  # bytes/s the fabric forwards in total between nodes (None: unlimited)
    rank_speed: tuple | None = None  # (P,) compute speed relative to device_flops
    algorithm: dict = field(default_factory=dict)
    _cache: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks={self.num_ranks!r} is invalid: a topology needs at least 1 rank")
        if self.ranks_per_node < 1 or self.num_ranks % self.ranks_per_node:
            raise ValueError(
                f"ranks_per_node={self.ranks_per_node!r} is invalid: it must be >= 1 and divide "
                f"num_ranks={self.num_ranks}")
        if self.star and (self.uplink is None or self.downlink is None):
            raise ValueError("star=True needs both an uplink and a downlink Link")
        if self.device_flops <= 0:
            raise ValueError(f"device_flops={self.device_flops!r} is invalid: it must be > 0")
        if self.oversubscription < 1:
            raise ValueError(f"oversubscription={self.oversubscription!r} is invalid: it must be >= 1")
        if self.fabric_bandwidth is not None and self.fabric_bandwidth <= 0:
            raise ValueError(f"fabric_bandwidth={self.fabric_bandwidth!r} is invalid: it must be > 0 (or None)")
        if self.shape not in ("switch", "torus"):
            raise ValueError(f"shape={self.shape!r} is invalid; allowed: 'switch', 'torus'")
        if not 1 <= self.server_shards <= self.num_ranks:
            raise ValueError(f"server_shards={self.server_shards!r} is invalid: it must be in 1..{self.num_ranks}")
        for name in ("client_uplinks", "rank_speed"):
            v = getattr(self, name)
            if v is not None and (len(v) != self.num_ranks or min(v) <= 0):
                raise ValueError(f"{name} is invalid: it needs {self.num_ranks} positive values, got {v!r}")
        algorithm = dict(self.algorithm or {})
        for op, name in algorithm.items():
            if op not in ALGORITHMS:
                raise ValueError(f"algorithm={{{op!r}: ...}} is invalid: op must be one of {list(ALGORITHMS)}")
            if name not in ("auto", "cheapest", *ALGORITHMS[op]):
                raise ValueError(f"algorithm={{{op!r}: {name!r}}} is invalid; allowed: "
                                 f"{['auto', 'cheapest', *ALGORITHMS[op]]}")
        object.__setattr__(self, "algorithm", MappingProxyType(algorithm))
        object.__setattr__(self, "_cache", {})  # (op, payload, ranks) -> Cost; a new one for every replace()

    def __hash__(self):  # `algorithm` is a mapping: hash its items
        return hash((self.name, self.num_ranks, self.ranks_per_node, self.intra, self.inter, self.shape,
                     self.rank_speed, tuple(sorted(self.algorithm.items()))))

    # ---- structure -------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def levels(self) -> list[tuple[str, int, Link]]:
        """The hierarchy, innermost first: (link class, ranks per group at that level, link)."""
        return [("intra", self.ranks_per_node, self.intra), ("inter", self.num_ranks, self.inter)]

    def link_class(self, src: int, dst: int) -> str:
        if self.star and (src == self.num_ranks or dst == self.num_ranks):
            return "uplink" if dst == self.num_ranks else "downlink"
        for cls, size, _ in self.levels():
            if src // size == dst // size:
                return cls
        raise AssertionError("the outermost level holds every rank")

    def link(self, cls: str) -> Link:
        return {"intra": self.intra, "inter": self.inter, "uplink": self.uplink, "downlink": self.downlink}[cls]

    def compute_seconds(self, flops: float) -> float:
        return flops / self.device_flops

    def compute_seconds_per_rank(self, flops: float) -> np.ndarray:
        """(P,) seconds each rank takes for `flops`, with its `rank_speed`."""
        speed = np.ones(self.num_ranks) if self.rank_speed is None else np.asarray(self.rank_speed, dtype=float)
        return flops / (self.device_flops * speed)

    def with_ranks(self, num_ranks: int) -> "Topology":
        per_rank = {k: None for k in ("client_uplinks", "rank_speed") if getattr(self, k) is not None}
        return replace(self, num_ranks=num_ranks, **per_rank)

    def pin(self, algorithms: dict) -> "Topology":
        """This topology with some ops' algorithms pinned (or set to 'auto' / 'cheapest')."""
        return replace(self, algorithm={**self.algorithm, **algorithms})

    def with_stragglers(self, num_slow: int, slowdown: float) -> "Topology":
        """The last `num_slow` ranks compute `slowdown` times slower (on top of any `rank_speed`)."""
        if not 0 <= num_slow <= self.num_ranks:
            raise ValueError(f"slow_ranks={num_slow!r} is invalid: expected 0..{self.num_ranks}")
        if slowdown < 1:
            raise ValueError(f"straggler_slowdown={slowdown!r} is invalid: expected a number >= 1")
        if num_slow == 0:
            return self
        speed = np.ones(self.num_ranks) if self.rank_speed is None else np.asarray(self.rank_speed, dtype=float)
        speed[self.num_ranks - num_slow:] /= slowdown
        return replace(self, rank_speed=tuple(speed.tolist()))

    def check_algorithm(self, op: str, name: str) -> None:
        """ValueError unless algorithm `name` applies to `op` on all ranks of this topology."""
        if name in ("auto", "cheapest"):
            return
        if op not in ALGORITHMS or name not in ALGORITHMS[op]:
            raise ValueError(f"{op}_algorithm={name!r} is invalid; allowed: "
                             f"{['auto', 'cheapest', *ALGORITHMS.get(op, {})]}")
        if self.star or ALGORITHMS[op][name](self, 1.0, list(range(self.num_ranks))) is None:
            raise ValueError(f"{op}_algorithm={name!r} does not apply to topology={self.name!r} with "
                             f"{self.num_ranks} ranks ({self.description or self.shape})")

    # ---- cost model --------------------------------------------------------------
    def _zeros(self) -> dict:
        return {c: np.zeros(self.num_ranks, dtype=np.int64) for c in LINK_CLASSES}

    def cost(self, op: str, payload_bytes: int, *, ranks: list[int] | None = None) -> Cost:
        """Cost of one call of `op` where each participating rank's payload is `payload_bytes`."""
        ranks = list(range(self.num_ranks)) if ranks is None else [int(r) for r in ranks]
        key = (op, float(payload_bytes), tuple(ranks))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cost(op, float(payload_bytes), ranks)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = hit
        return _copy(hit)

    def _cost(self, op: str, m: float, ranks: list[int]) -> Cost:
        p = len(ranks)
        if op in ("server_gather", "server_broadcast"):
            up = op == "server_gather"
            if self.star:
                server = self.num_ranks
                pairs = [(r, server) if up else (server, r) for r in ranks]
                return self.schedule_cost([Step.of(pairs, m)], "star")
            pairs = [(r, 0) if up else (0, r) for r in ranks if r != 0]
            return self.schedule_cost([Step.of(pairs, m)], "rank0_server")
        if op in ("shift", "mix"):  # the caller knows the peers; by default: a ring shift by one
            return self.peer_cost([(r, ranks[(i + 1) % p]) for i, r in enumerate(ranks)], m, op)
        if op not in ALGORITHMS:
            raise ValueError(f"op={op!r} is unknown to the topology cost model")
        if p <= 1:
            return Cost(0.0, "local", self._zeros(), 0, np.zeros((self.num_ranks + 1,) * 2))
        if self.star:  # phones do not talk to each other: every collective goes via the server
            up, down = {
                "all_reduce": (m, m), "all_gather": (m, (p - 1) * m), "reduce_scatter": (m, m / p),
                "broadcast": (0.0, m), "all_to_all": (m, m),
            }[op]
            server = self.num_ranks
            return self.schedule_cost([Step.of([(r, server) for r in ranks], up) if up else None,
                                       Step.of([(server, r) for r in ranks], down)], "star")
        choice = self.algorithm.get(op, "auto")
        if choice not in ("auto", "cheapest"):
            steps = ALGORITHMS[op][choice](self, m, ranks)
            if steps is not None:
                return self.schedule_cost(steps, choice)
            choice = "auto"
        names = AUTO[op] if choice == "auto" else tuple(ALGORITHMS[op])
        best = None
        for name in names:
            steps = ALGORITHMS[op][name](self, m, ranks)
            if steps is None:
                continue
            c = self.schedule_cost(steps, name)
            if best is None or c.seconds < best.seconds:
                best = c
        assert best is not None, f"no algorithm applies to {op} on {ranks}"
        return best

    def peer_cost(self, pairs: list[tuple[int, int]], m: float, op: str) -> Cost:
        """Point-to-point messages of M bytes for each (src, dst) pair, all at once.

        A rank with several peers sends to them through the same NIC. On a star
        each message goes up to the server and back down to its receiver.
        """
        pairs = [(int(s), int(d)) for s, d in pairs if s != d]
        if self.star:
            server = self.num_ranks
            return self.schedule_cost([Step.of([(s, server) for s, _ in pairs], m),
                                       Step.of([(server, d) for _, d in pairs], m)], "p2p")
        return self.schedule_cost([Step.of(pairs, m)], "p2p")

    # ---- the step engine ------------------------------------------------------------
    def schedule_cost(self, steps, algorithm: str) -> Cost:
        """Bytes, traffic and seconds of a schedule (a list of Steps; None entries are skipped)."""
        p = self.num_ranks
        sent = np.zeros((len(LINK_CLASSES), p))
        traffic = np.zeros((p + 1, p + 1))
        seconds, messages = 0.0, 0
        for s in steps:
            if s is None:
                continue
            cls = self._classes(s.src, s.dst)  # (k,) index into LINK_CLASSES
            counted_at = np.where(s.src == p, s.dst, s.src)  # downlink bytes count at the receiving client
            np.add.at(sent, (cls, counted_at), s.nbytes * s.repeat)
            np.add.at(traffic, (s.src, s.dst), s.nbytes * s.repeat)
            seconds += s.repeat * self._step_seconds(s, cls)
            messages += s.repeat * s.hops
        b = {c: np.rint(sent[i]).astype(np.int64) for i, c in enumerate(LINK_CLASSES)}
        return Cost(seconds, algorithm, b, messages, traffic)

    def _classes(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        p = self.num_ranks
        out = np.empty(src.shape, dtype=np.int64)
        inner = (src < p) & (dst < p)
        level = np.full(src.shape, len(self.levels()) - 1)
        for i, (_, size, _) in reversed(list(enumerate(self.levels()))):
            level = np.where(src // size == dst // size, i, level)
        names = [c for c, _, _ in self.levels()]
        out[inner] = np.array([LINK_CLASSES.index(n) for n in names])[level[inner]]
        out[dst == p] = LINK_CLASSES.index("uplink")
        out[src == p] = LINK_CLASSES.index("downlink")
        return out

    def _step_seconds(self, s: Step, cls: np.ndarray) -> float:
        res, cap, lat = self._resources(s.src, s.dst, cls)
        load = np.bincount(res[1], weights=s.nbytes[res[0]], minlength=cap.size)
        used = load > 0
        return s.hops * float(lat.max()) + float((load[used] / cap[used]).max())

    def _resources(self, src, dst, cls):
        """((message index, resource index) arrays, capacities, per-message latency) for one step."""
        p, n = self.num_ranks, self.num_nodes
        links = [self.link(c) if c in ("intra", "inter") or self.star else None for c in LINK_CLASSES]
        alpha = np.array([l.latency_s if l is not None else 0.0 for l in links])
        if self.shape == "torus" and not self.star:
            return self._torus_resources(src, dst)
        k = np.arange(src.size)
        # resource blocks: per-rank tx/rx for each of the 2 peer classes, node up/down, client up/down
        caps = [np.full(p, self.intra.bandwidth), np.full(p, self.intra.bandwidth),
                np.full(p, self.inter.bandwidth), np.full(p, self.inter.bandwidth),
                np.full(n, self.ranks_per_node * self.inter.bandwidth / self.oversubscription),
                np.full(n, self.ranks_per_node * self.inter.bandwidth / self.oversubscription)]
        if self.star:
            ups = self.client_uplinks or (self.uplink.bandwidth,) * p
            caps += [np.asarray(ups, dtype=float), np.full(p, self.downlink.bandwidth)]
        caps.append(np.array([self.fabric_bandwidth or np.inf]))
        base = np.cumsum([0] + [c.size for c in caps])
        msg, idx = [], []
        intra, inter = cls == 0, cls == 1
        for mask, (tx, rx) in ((intra, (0, 1)), (inter, (2, 3))):
            msg += [k[mask], k[mask]]
            idx += [base[tx] + src[mask], base[rx] + dst[mask]]
        msg += [k[inter], k[inter]]
        idx += [base[4] + src[inter] // self.ranks_per_node, base[5] + dst[inter] // self.ranks_per_node]
        if self.star:
            up, down = cls == 2, cls == 3
            msg += [k[up], k[down]]
            idx += [base[6] + src[up], base[7] + dst[down]]
        if self.fabric_bandwidth:
            msg.append(k[inter])
            idx.append(np.full(int(inter.sum()), base[-2]))
        res = (np.concatenate(msg), np.concatenate(idx))
        return res, np.concatenate(caps), alpha[cls]

    def _torus_resources(self, src, dst):
        """Dimension-ordered routing on the X × Y torus (X = ranks_per_node): each hop is a directed link."""
        x_size, y_size = self.ranks_per_node, self.num_nodes
        routes = self._cache.setdefault("_routes", {})
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
                route = (hops, nx * self.intra.latency_s + (len(hops) - nx) * self.inter.latency_s)
                routes[(s, d)] = route
            msg += [i] * len(route[0])
            idx += route[0]
            lat[i] = route[1]
        cap = np.empty(self.num_ranks * 4)
        cap[0::4] = cap[1::4] = self.intra.bandwidth
        cap[2::4] = cap[3::4] = self.inter.bandwidth
        return (np.array(msg, dtype=np.int64), np.array(idx, dtype=np.int64)), cap, lat


def _copy(c: Cost) -> Cost:
    return Cost(c.seconds, c.algorithm, {k: v.copy() for k, v in c.bytes.items()}, c.messages,
                None if c.traffic is None else c.traffic.copy())


# ---- schedules ------------------------------------------------------------------------------------------
# Each builder takes (topology, payload M, participating ranks in order) and returns a list of Steps,
# or None when the algorithm does not apply.

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


# ---- presets -------------------------------------------------------------------------
# Numbers are round public figures for the hardware named, used for simulated time only.
NVLINK = Link(latency_s=5e-6, bandwidth=450e9)  # NVLink 4, per direction
IB400 = Link(latency_s=10e-6, bandwidth=gbit(400))
WAN1G = Link(latency_s=30e-3, bandwidth=gbit(1))
H100_FLOPS = 400e12  # sustained bf16 FLOP/s, roughly 40% of peak
ICI = Link(latency_s=2e-6, bandwidth=45e9)  # one TPU-v4-class inter-chip link, per direction
TPU_FLOPS = 110e12  # sustained bf16 FLOP/s, roughly 40% of a v4 chip's peak
ETH10G = Link(latency_s=25e-6, bandwidth=gbit(10))
CPU_FLOPS = 50e9  # a CPU server's sustained fp32 FLOP/s


def _nvlink_node(n: int) -> Topology:
    if n > 8:
        raise ValueError(f"num_workers={n!r} does not fit topology='nvlink_node': one 8-GPU node holds at most 8 ranks")
    return Topology("nvlink_node", n, n, NVLINK, IB400, H100_FLOPS, device="H100",
                    description="one node of 8 GPUs on NVLink (450 GB/s, 5 µs)")


def _multinode(n: int) -> Topology:
    if n % 4:
        raise ValueError(f"num_workers={n!r} does not fit topology='multinode_4x8': it must be a multiple of 4 "
                         "(ranks are spread over 4 nodes)")
    return Topology("multinode_4x8", n, n // 4, NVLINK, IB400, H100_FLOPS, device="H100",
                    description="4 nodes of GPUs on NVLink, joined by 400 Gb/s InfiniBand (10 µs)")


def _leaf_spine(n: int) -> Topology:
    if n % 2 or n < 4:
        raise ValueError(f"num_workers={n!r} does not fit topology='leaf_spine': it must be an even number >= 4 "
                         "(2 ranks per node, at least 2 nodes)")
    return Topology("leaf_spine", n, 2, NVLINK, Link(latency_s=15e-6, bandwidth=gbit(100)), H100_FLOPS,
                    oversubscription=4.0, device="H100",
                    description="nodes of 2 GPUs on NVLink, a 100 Gb/s rail NIC per GPU, leaf-spine fabric "
                                "oversubscribed 4:1")


def _torus_2d(n: int) -> Topology:
    x = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    if x < 2:
        raise ValueError(f"num_workers={n!r} does not fit topology='torus_2d': it needs an X × Y grid with "
                         "X, Y >= 2 (e.g. 4, 6, 8, 9, 16)")
    return Topology("torus_2d", n, x, ICI, ICI, TPU_FLOPS, shape="torus", device="TPU-v4-class chip",
                    description=f"a {x} × {n // x} 2D torus of chips, 45 GB/s links (2 µs)")


def _wan(n: int) -> Topology:
    return Topology("wan_sites", n, 1, NVLINK, WAN1G, H100_FLOPS, device="H100",
                    description="one rank per site, sites joined by a 1 Gb/s WAN (30 ms)")


def _ethernet(n: int) -> Topology:
    return Topology("ethernet", n, 1, ETH10G, ETH10G, CPU_FLOPS, device="CPU server",
                    description="CPU servers (50 GFLOP/s) on a 10 Gb/s Ethernet switch (25 µs)")


def _phones(n: int) -> Topology:
    return Topology("phones", n, 1, WAN1G, WAN1G, 1e12, star=True, device="phone NPU",
                    uplink=Link(latency_s=50e-3, bandwidth=20e6 / 8),
                    downlink=Link(latency_s=50e-3, bandwidth=100e6 / 8),
                    description="phones on 20 Mb/s uplinks and 100 Mb/s downlinks (50 ms) to a server")


def _phones_mixed(n: int) -> Topology:
    ups = tuple(float(5e6 * 10 ** ((r % 10) / 9) / 8) for r in range(n))  # 5 .. 50 Mb/s, cycling over ranks
    return replace(_phones(n), name="phones_mixed", client_uplinks=ups,
                   description="phones with uplinks from 5 to 50 Mb/s and 100 Mb/s downlinks (50 ms) to a server")


PRESETS = {"nvlink_node": _nvlink_node, "multinode_4x8": _multinode, "leaf_spine": _leaf_spine,
           "torus_2d": _torus_2d, "wan_sites": _wan, "ethernet": _ethernet, "phones": _phones,
           "phones_mixed": _phones_mixed}
PRESET_SIZES = {"nvlink_node": 8, "multinode_4x8": 32, "leaf_spine": 16, "torus_2d": 16, "wan_sites": 16,
                "ethernet": 8, "phones": 100, "phones_mixed": 100}


def preset(name: str, num_ranks: int | None = None) -> Topology:
    """A preset topology for `num_ranks` ranks (default: the preset's own size)."""
    if name not in PRESETS:
        raise ValueError(f"topology={name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[name](PRESET_SIZES[name] if num_ranks is None else num_ranks)


def build(*, num_nodes: int, ranks_per_node: int, intra_gbit: float, inter_gbit: float,
          intra_latency_s: float = 5e-6, inter_latency_s: float = 10e-6, device_flops: float = H100_FLOPS,
          oversubscription: float = 1.0, shape: str = "switch", algorithm: dict | None = None,
          name: str = "custom") -> Topology:
    """A custom topology of `num_nodes` × `ranks_per_node` ranks (shape='torus': a ranks_per_node × num_nodes
    torus whose X links are the intra links and Y links the inter links)."""
    for field_name, v in (("num_nodes", num_nodes), ("ranks_per_node", ranks_per_node)):
        if v < 1:
            raise ValueError(f"{field_name}={v!r} is invalid: it must be >= 1")
    for field_name, v in (("intra_gbit", intra_gbit), ("inter_gbit", inter_gbit)):
        if v <= 0:
            raise ValueError(f"{field_name}={v!r} is invalid: bandwidth must be > 0")
    return Topology(name, num_nodes * ranks_per_node, ranks_per_node,
                    Link(intra_latency_s, gbit(intra_gbit)), Link(inter_latency_s, gbit(inter_gbit)), device_flops,
                    oversubscription=oversubscription, shape=shape, algorithm=algorithm or {},
                    description=f"{num_nodes} nodes × {ranks_per_node} ranks"
                                + (f", {oversubscription:g}:1 oversubscribed" if oversubscription > 1 else ""))


# ---- experiment configs -----------------------------------------------------------------
ALL_REDUCE_CHOICES = ("auto", "cheapest", *ALGORITHMS["all_reduce"])


def for_config(config) -> Topology:
    """The Topology an ExperimentConfig trains on: its preset for `num_workers`, with the pinned all-reduce
    algorithm and the last `slow_ranks` ranks slowed by `straggler_slowdown`."""
    t = preset(config.topology, config.num_workers)
    if config.all_reduce_algorithm != "auto":
        t = t.pin({"all_reduce": config.all_reduce_algorithm})
    return t.with_stragglers(config.slow_ranks, config.straggler_slowdown) if config.slow_ranks else t


def clock_decides(config, topology: Topology) -> bool:
    """Whether sim_seconds is the per-rank clock's makespan (overlap: DDP's buckets, Streaming DiLoCo's
    `overlap_steps`; or ranks of unequal speed) rather than compute + communication (the two agree otherwise,
    up to float rounding)."""
    return bool(config.overlap) or topology.rank_speed is not None or getattr(config, "overlap_steps", 0) > 0


def check_config(c, bad) -> None:
    """Validate the topology-family fields of an ExperimentConfig; `bad(name, value, allowed)` raises."""
    from lab.gossip import mixing_matrix

    if not isinstance(c.overlap, bool):
        bad("overlap", c.overlap, "True or False")
    for name in ("gossip_period", "graph_degree", "num_buckets"):
        if getattr(c, name) < 1:
            bad(name, getattr(c, name), "an integer >= 1")
    if not 0 <= c.slow_ranks <= c.num_workers:
        bad("slow_ranks", c.slow_ranks, f"an integer in 0..num_workers={c.num_workers}")
    t = preset(c.topology, c.num_workers)
    try:
        t.check_algorithm("all_reduce", c.all_reduce_algorithm)
    except ValueError as e:
        bad("all_reduce_algorithm", c.all_reduce_algorithm, f"an algorithm that applies here ({e})")
    if c.technique == "dpsgd" and c.graph == "random_regular":
        try:
            mixing_matrix("random_regular", c.num_workers, degree=c.graph_degree, seed=c.seed)
        except ValueError as e:
            bad("graph_degree", c.graph_degree, str(e).split(": ", 1)[-1])


def algorithm_table(t: Topology, op: str, sizes, algorithms=None):
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
