"""Preset topologies (round public figures for the hardware named; simulated time only) and `build`.

`preset(name, num_ranks)` builds one of `PRESETS` for a number of ranks
(default `PRESET_SIZES[name]`); `build(...)` makes a custom switch or torus.
"""
from __future__ import annotations

import math
from dataclasses import replace

from lab.topology.cost import Link, gbit
from lab.topology.model import Topology

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


def _nodes_on_infiniband(name: str, num_nodes: int, n: int) -> Topology:
    """n ranks spread evenly over `num_nodes` nodes of NVLink GPUs joined by 400 Gb/s InfiniBand."""
    if n % num_nodes or n < num_nodes:
        raise ValueError(f"num_workers={n!r} does not fit topology={name!r}: it must be a positive multiple of "
                         f"{num_nodes} (ranks are spread over {num_nodes} nodes)")
    return Topology(name, n, n // num_nodes, NVLINK, IB400, H100_FLOPS, device="H100",
                    description=f"{num_nodes} nodes of GPUs on NVLink, joined by 400 Gb/s InfiniBand (10 µs)")


def _multinode(n: int) -> Topology:
    return _nodes_on_infiniband("multinode_4x8", 4, n)


def _two_nodes(n: int) -> Topology:
    return _nodes_on_infiniband("multinode_2x4", 2, n)


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


PRESETS = {"nvlink_node": _nvlink_node, "multinode_4x8": _multinode, "multinode_2x4": _two_nodes,
           "leaf_spine": _leaf_spine, "torus_2d": _torus_2d, "wan_sites": _wan, "ethernet": _ethernet,
           "phones": _phones, "phones_mixed": _phones_mixed}
PRESET_SIZES = {"nvlink_node": 8, "multinode_4x8": 32, "multinode_2x4": 8, "leaf_spine": 16, "torus_2d": 16,
                "wan_sites": 16, "ethernet": 8, "phones": 100, "phones_mixed": 100}


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

