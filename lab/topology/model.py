"""The `Topology`: ranks on nodes, their links and wiring, and the cost of one collective call.

`Topology.cost(op, payload_bytes, ranks=...)` picks the algorithm (below) and
costs its schedule (`lab.topology.algorithms`) with the step engine
(`lab.topology.cost`).

Choosing. Per op, `algorithm` maps to a name (pinned), to 'auto' (the cheapest
of `AUTO`, the bandwidth-optimal family a library such as NCCL defaults to:
ring vs hierarchical vs torus for all-reduce) or to 'cheapest' (the cheapest of
every algorithm that applies, latency-optimal trees and recursive
halving-doubling included). A pinned algorithm that does not apply to a call
(e.g. rhd on 6 ranks, hierarchical inside one node) falls back to 'auto'; the
Ledger records the algorithm each call used.

`shift`/`mix` (gossip) are point-to-point (`peer_cost`), and the federated ops
`server_gather`/`server_broadcast` go through a star's server (or rank 0 when
the topology has no server). On a federated star every collective goes through
the server: clients upload, the server combines, then sends back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from lab.topology.algorithms import ALGORITHMS, AUTO
from lab.topology.compressed import COMPRESSED
from lab.topology.cost import LINK_CLASSES, Cost, Link, Step, Traffic, copy_cost, schedule_cost as cost_of_schedule


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
        known = {**ALGORITHMS, **COMPRESSED}  # the compressed all-reduce pins the same way (lab.topology.compressed)
        for op, name in algorithm.items():
            if op not in known:
                raise ValueError(f"algorithm={{{op!r}: ...}} is invalid: op must be one of {list(known)}")
            if name not in ("auto", "cheapest", *known[op]):
                raise ValueError(f"algorithm={{{op!r}: {name!r}}} is invalid; allowed: "
                                 f"{['auto', 'cheapest', *known[op]]}")
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

    def with_ranks(self, num_ranks: int) -> Topology:
        per_rank = {k: None for k in ("client_uplinks", "rank_speed") if getattr(self, k) is not None}
        return replace(self, num_ranks=num_ranks, **per_rank)

    def pin(self, algorithms: dict) -> Topology:
        """This topology with some ops' algorithms pinned (or set to 'auto' / 'cheapest')."""
        return replace(self, algorithm={**self.algorithm, **algorithms})

    def with_stragglers(self, num_slow: int, slowdown: float) -> Topology:
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
            if len(self._cache) > max(16, min(4096, 2**21 // self.num_ranks)):  # each Cost holds (P,) rows
                self._cache.clear()
            self._cache[key] = hit
        return copy_cost(hit)

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
            return Cost(0.0, "local", self._zeros(), 0, Traffic(self.num_ranks + 1))
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
        return cost_of_schedule(self, steps, algorithm)
