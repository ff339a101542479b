"""Topology: ranks on nodes, link classes, and what a collective costs under each algorithm.

A `Topology` says which ranks share a node, what each link class costs
(latency α in seconds per message, bandwidth in bytes per second, β = 1/bw),
how the nodes are wired (a switch with optional oversubscription, a 2D torus,
or a federated star around a server) and how fast each rank computes.
`Topology.cost(op, payload_bytes, ranks=...)` returns a `Cost`: the bytes each
rank sends on each link class, the seconds of one call, the algorithm used and
the messages on its critical path (ref. shared/techniques/sharding_and_topology.md
§0.2, §B1).

The package, one job per module:

- `lab.topology.cost`: `Link`, `Cost`, `Step` and the step engine that costs a schedule;
- `lab.topology.algorithms`: every collective algorithm as a schedule (`ALGORITHMS`, `AUTO`, `algorithm_table`);
- `lab.topology.compressed`: the compressed all-reduce's algorithms (all-gather, two-phase, star) and choice;
- `lab.topology.model`: the `Topology` (structure, choosing an algorithm, `cost`, `peer_cost`);
- `lab.topology.presets`: device and link constants, `PRESETS`, `preset`, `build`;
- `lab.topology.config`: what an ExperimentConfig trains on (`for_config`, `check_config`, `clock_decides`).

Everything is re-exported here: `from lab.topology import preset`.
"""
from lab.topology.algorithms import ALGORITHMS, AUTO, algorithm_table
from lab.topology.config import ALL_REDUCE_CHOICES, check_config, clock_decides, for_config
from lab.topology.cost import LINK_CLASSES, Cost, Link, Step, Traffic, gbit
from lab.topology.model import Topology
from lab.topology.presets import (
    CPU_FLOPS,
    ETH10G,
    H100_FLOPS,
    IB400,
    ICI,
    NVLINK,
    PRESET_SIZES,
    PRESETS,
    TPU_FLOPS,
    WAN1G,
    build,
    preset,
)

__all__ = [
    "ALGORITHMS", "ALL_REDUCE_CHOICES", "AUTO", "CPU_FLOPS", "ETH10G", "H100_FLOPS", "IB400", "ICI", "LINK_CLASSES",
    "NVLINK", "PRESETS", "PRESET_SIZES", "TPU_FLOPS", "WAN1G", "Cost", "Link", "Step", "Topology", "Traffic",
    "algorithm_table", "build", "check_config", "clock_decides", "for_config", "gbit", "preset",
]
