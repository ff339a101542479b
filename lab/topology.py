"""Topology: ranks grouped into nodes, link classes, and the α-β cost of collectives.

A `Topology` says which ranks share a node, what each link class costs
(latency α in seconds per message, bandwidth in bytes per second, so β = 1/bw),
and how fast each rank computes. `Topology.cost(op, payload_bytes)` returns the
bytes each rank puts on each link class and the simulated seconds of one call,
using the collective algorithm it would run (ref.
shared/techniques/sharding_and_topology.md §0.2 and Part B §B1):

=====================  =============================  =======================================
op                     algorithm                      bytes sent per rank (M = payload)
=====================  =============================  =======================================
all_reduce             ring                           2(P-1)/P · M, 2(P-1) steps
all_reduce             hierarchical (2-level)         intra 2(D-1)/D · M; inter 2(n-1)/n · M/D
all_gather             ring                           (P-1) · M   (M = one rank's chunk)
reduce_scatter         ring                           (P-1)/P · M (M = the full input)
broadcast              pipelined chain                ≈ M (every rank but the last)
all_to_all             pairwise                       (P-1)/P · M (M = the send buffer)
shift                  point-to-point                 M
server_gather          star uplink                    M per participating client
server_broadcast       star downlink                  M per participating client (received)
=====================  =============================  =======================================

The ring all-reduce and the hierarchical one are both costed and the cheaper is
used; the Ledger records which. On a federated star (`star=True`) every
rank-to-rank collective is routed through the server (clients upload, the
server reduces, then sends back), since phones do not talk to each other.

Bytes are split by link class: ``intra`` (same node), ``inter`` (between
nodes), ``uplink`` (client to server), ``downlink`` (server to client, counted
at the receiving client).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

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
    """What one collective call costs: seconds, algorithm and bytes per rank per link class."""

    seconds: float
    algorithm: str
    bytes: dict  # link class -> np.ndarray (P,) int64, bytes each rank sends (downlink: receives)
    messages: int  # messages on the critical path


def gbit(x: float) -> float:
    """Gigabits per second in bytes per second."""
    return x * 1e9 / 8


@dataclass(frozen=True)
class Topology:
    """Ranks on nodes with two link classes (plus a server for a federated star).

    Knobs: `num_ranks`, `ranks_per_node` (D), the `intra`/`inter` links, `star`
    with per-client `uplink`/`downlink`, and `device_flops` (sustained FLOP/s
    of one rank, used for compute time).
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

    # ---- structure -------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def link_class(self, src: int, dst: int) -> str:
        return "intra" if self.node_of(src) == self.node_of(dst) else "inter"

    def link(self, cls: str) -> Link:
        return {"intra": self.intra, "inter": self.inter, "uplink": self.uplink, "downlink": self.downlink}[cls]

    def compute_seconds(self, flops: float) -> float:
        return flops / self.device_flops

    # ---- cost model --------------------------------------------------------------
    def _zeros(self) -> dict:
        return {c: np.zeros(self.num_ranks, dtype=np.int64) for c in LINK_CLASSES}

    def _ring_cost(self, bytes_per_rank: float, steps: int, step_bytes: float, ranks: list[int]) -> Cost:
        """A ring over `ranks` in order: each rank sends everything to its successor."""
        b = self._zeros()
        classes = set()
        p = len(ranks)
        for i, r in enumerate(ranks):
            nxt = ranks[(i + 1) % p]
            if nxt == r:
                continue
            cls = self.link_class(r, nxt)
            classes.add(cls)
            b[cls][r] += int(round(bytes_per_rank))
        slow = max((self.link(c) for c in classes), key=lambda l: l.time(step_bytes), default=self.intra)
        return Cost(steps * slow.time(step_bytes) if p > 1 else 0.0, "ring", b, steps if p > 1 else 0)

    def _star_cost(self, up_bytes: float, down_bytes: float, ranks: list[int], algorithm: str) -> Cost:
        """Clients in `ranks` upload `up_bytes` and download `down_bytes` in parallel."""
        b = self._zeros()
        seconds = 0.0
        if up_bytes:
            b["uplink"][ranks] += int(up_bytes)
            seconds += self.uplink.time(up_bytes)
        if down_bytes:
            b["downlink"][ranks] += int(down_bytes)
            seconds += self.downlink.time(down_bytes)
        return Cost(seconds if ranks else 0.0, algorithm, b, int(bool(up_bytes)) + int(bool(down_bytes)))

    def _server_on_rank0(self, up_bytes: float, down_bytes: float, ranks: list[int], algorithm: str) -> Cost:
        """No separate server: rank 0 hosts it, so its NIC serializes the incast."""
        b = self._zeros()
        seconds = 0.0
        others = [r for r in ranks if r != 0]
        for r in others:
            cls = self.link_class(r, 0)
            if up_bytes:
                b[cls][r] += int(up_bytes)
            if down_bytes:
                b[cls][0] += int(down_bytes)
        if others:
            slow = self.inter if any(self.link_class(r, 0) == "inter" for r in others) else self.intra
            seconds = slow.time(len(others) * (up_bytes + down_bytes),
                                messages=int(bool(up_bytes)) + int(bool(down_bytes)))
        return Cost(seconds, algorithm, b, int(bool(up_bytes)) + int(bool(down_bytes)))

    def cost(self, op: str, payload_bytes: int, *, ranks: list[int] | None = None) -> Cost:
        """Cost of one call of `op` where each participating rank's payload is `payload_bytes`."""
        ranks = list(range(self.num_ranks)) if ranks is None else list(ranks)
        p = len(ranks)
        m = float(payload_bytes)
        if op in ("server_gather", "server_broadcast"):
            up, down = (m, 0.0) if op == "server_gather" else (0.0, m)
            if self.star:
                return self._star_cost(up, down, ranks, "star")
            return self._server_on_rank0(up, down, ranks, "rank0_server")
        if p <= 1:
            return Cost(0.0, "local", self._zeros(), 0)
        if self.star:  # phones do not talk to each other: every collective goes via the server
            up, down = {
                "all_reduce": (m, m), "all_gather": (m, (p - 1) * m), "reduce_scatter": (m, m / p),
                "broadcast": (0.0, m), "all_to_all": (m, m), "shift": (m, m), "mix": (m, m),
            }[op]
            return self._star_cost(up, down, ranks, "star")
        if op == "all_reduce":
            ring = self._ring_cost(2 * (p - 1) / p * m, 2 * (p - 1), m / p, ranks)
            hier = self._hierarchical_all_reduce(m, ranks)
            return ring if hier is None or ring.seconds <= hier.seconds else hier
        if op == "all_gather":
            return self._ring_cost((p - 1) * m, p - 1, m, ranks)
        if op == "reduce_scatter":
            return self._ring_cost((p - 1) / p * m, p - 1, m / p, ranks)
        if op == "broadcast":
            # pipelined chain: every rank but the last forwards the whole message
            c = self._ring_cost(m, p - 1, m, ranks)
            last = ranks[-1]
            for cls in c.bytes:
                c.bytes[cls][last] = 0
            slow = max((self.link(k) for k in ("intra", "inter") if c.bytes[k].any()), key=lambda l: l.time(m),
                       default=self.intra)
            return Cost((p - 2) * slow.latency_s + slow.time(m), "pipelined_chain", c.bytes, p - 1)
        if op in ("all_to_all", "shift", "mix"):
            return self._pairwise(op, m, ranks)
        raise ValueError(f"op={op!r} is unknown to the topology cost model")

    def _hierarchical_all_reduce(self, m: float, ranks: list[int]) -> Cost | None:
        """Reduce-scatter inside nodes, all-reduce across nodes on M/D, all-gather inside."""
        if len(ranks) != self.num_ranks or self.num_nodes == 1 or self.ranks_per_node == 1:
            return None
        d, n = self.ranks_per_node, self.num_nodes
        b = self._zeros()
        b["intra"][:] = int(round(2 * (d - 1) / d * m))
        b["inter"][:] = int(round(2 * (n - 1) / n * m / d))
        seconds = 2 * (d - 1) * self.intra.time(m / d) + 2 * (n - 1) * self.inter.time(m / (d * n))
        return Cost(seconds, "hierarchical", b, 2 * (d - 1) + 2 * (n - 1))

    def _pairwise(self, op: str, m: float, ranks: list[int]) -> Cost:
        """all_to_all: M/P to every other rank; shift/mix: the caller records exact peers."""
        b = self._zeros()
        p = len(ranks)
        seconds = 0.0
        if op == "all_to_all":
            chunk = m / p
            for r in ranks:
                for q in ranks:
                    if q != r:
                        b[self.link_class(r, q)][r] += int(round(chunk))
            for k in range(1, p):  # step k: every rank sends to rank + k
                cls = {self.link_class(ranks[i], ranks[(i + k) % p]) for i in range(p)}
                seconds += max(self.link(c).time(chunk) for c in cls)
            return Cost(seconds, "pairwise", b, p - 1)
        for i, r in enumerate(ranks):  # shift by one: each rank sends M to its successor
            b[self.link_class(r, ranks[(i + 1) % p])][r] += int(m)
        cls = {c for c in ("intra", "inter") if b[c].any()}
        return Cost(max(self.link(c).time(m) for c in cls), "p2p", b, 1)

    def peer_cost(self, pairs: list[tuple[int, int]], m: float, op: str) -> Cost:
        """Point-to-point messages of M bytes for each (src, dst) pair, all in parallel."""
        b = self._zeros()
        seconds = 0.0
        for src, dst in pairs:
            if src == dst:
                continue
            if self.star:
                b["uplink"][src] += int(m)
                b["downlink"][dst] += int(m)
                seconds = max(seconds, self.uplink.time(m) + self.downlink.time(m))
            else:
                cls = self.link_class(src, dst)
                b[cls][src] += int(m)
                seconds = max(seconds, self.link(cls).time(m))
        return Cost(seconds, "p2p", b, 1 if pairs else 0)

    def with_ranks(self, num_ranks: int) -> "Topology":
        return replace(self, num_ranks=num_ranks)


# ---- presets -------------------------------------------------------------------------
# Numbers are round public figures for the hardware named, used for simulated time only.
NVLINK = Link(latency_s=5e-6, bandwidth=450e9)  # NVLink 4, per direction
IB400 = Link(latency_s=10e-6, bandwidth=gbit(400))
WAN1G = Link(latency_s=30e-3, bandwidth=gbit(1))
H100_FLOPS = 400e12  # sustained bf16 FLOP/s, roughly 40% of peak


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


def _wan(n: int) -> Topology:
    return Topology("wan_sites", n, 1, NVLINK, WAN1G, H100_FLOPS, device="H100",
                    description="one rank per site, sites joined by a 1 Gb/s WAN (30 ms)")


def _phones(n: int) -> Topology:
    return Topology("phones", n, 1, WAN1G, WAN1G, 1e12, star=True, device="phone NPU",
                    uplink=Link(latency_s=50e-3, bandwidth=20e6 / 8),
                    downlink=Link(latency_s=50e-3, bandwidth=100e6 / 8),
                    description="phones on 20 Mb/s uplinks and 100 Mb/s downlinks (50 ms) to a server")


PRESETS = {"nvlink_node": _nvlink_node, "multinode_4x8": _multinode, "wan_sites": _wan, "phones": _phones}
PRESET_SIZES = {"nvlink_node": 8, "multinode_4x8": 32, "wan_sites": 16, "phones": 100}


def preset(name: str, num_ranks: int | None = None) -> Topology:
    """A preset topology for `num_ranks` ranks (default: the preset's own size)."""
    if name not in PRESETS:
        raise ValueError(f"topology={name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[name](PRESET_SIZES[name] if num_ranks is None else num_ranks)


def build(*, num_nodes: int, ranks_per_node: int, intra_gbit: float, inter_gbit: float,
          intra_latency_s: float = 5e-6, inter_latency_s: float = 10e-6, device_flops: float = H100_FLOPS,
          name: str = "custom") -> Topology:
    """A custom topology of `num_nodes` × `ranks_per_node` ranks."""
    for field_name, v in (("num_nodes", num_nodes), ("ranks_per_node", ranks_per_node)):
        if v < 1:
            raise ValueError(f"{field_name}={v!r} is invalid: it must be >= 1")
    for field_name, v in (("intra_gbit", intra_gbit), ("inter_gbit", inter_gbit)):
        if v <= 0:
            raise ValueError(f"{field_name}={v!r} is invalid: bandwidth must be > 0")
    return Topology(name, num_nodes * ranks_per_node, ranks_per_node,
                    Link(intra_latency_s, gbit(intra_gbit)), Link(inter_latency_s, gbit(inter_gbit)), device_flops,
                    description=f"{num_nodes} nodes × {ranks_per_node} ranks")
