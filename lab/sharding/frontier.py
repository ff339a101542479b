"""3-level hierarchical partitioning for three bandwidth tiers ("Scaling LLM Training on Frontier with
Low-Bandwidth Partitioning", Xu et al., arXiv 2501.04266; spec §A4, abstract only).

Idea. ZeRO++'s hpZ puts a secondary copy of the weights in each node so the
backward gather stays in the node. Frontier has three tiers: the two dies (GCDs)
of an MI250X, the GPUs of a node, the nodes. Extending the partitioning to three
levels lets the most frequent traffic use the fastest tier:
- primary parameters and optimizer states on all P ranks (level 3);
- the secondary copy for the backward gather on level ℓ ∈ {1 (the GPU's dies),
  2 (the node)}: the backward gather runs inside that group only;
- gradients reduced hierarchically: inside the die pair, then among the node's
  GPUs on the pair-reduced slices, then across nodes on the node-reduced slices
  (lab.sharding.hierarchy with sizes (g1, g2/g1, P/g2)), optionally int4 at
  every hop (qgZ).
Which state sits at which level is the spec's [UNVERIFIED] reconstruction.

`ThreeLevel` is the three-tier network (link classes 'die', 'gpu', 'node'; its
own α-β cost of ring and pairwise collectives inside groups, since the lab's
`Topology` has two link classes); `scheme_calls` lists a step's collectives for
ZeRO-3, ZeRO++ (hpZ with the 2-hop reduction) and the 3-level scheme, and
`compare` prices them per tier. The same schedules run for real on rank-stacked
tensors in `lab.sharding.zero.ZeRO` (`reduce_levels='die+node'`, `hpz_size`),
where the 2-level Ledger shows die and GPU links both as 'intra'.

Tier bandwidths are the spec's from-memory figures [UNVERIFIED]: 200 GB/s
between the dies, 50–100 GB/s between GPUs (75 used), 4 × 25 GB/s injection per
node shared by its 8 dies (12.5 GB/s each). They drive simulated time only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.sharding.layout import contiguous_groups, level_groups
from lab.sharding.planner import Call, quant_bytes
from lab.topology import Link

TIERS = ("die", "gpu", "node")


@dataclass(frozen=True)
class ThreeLevel:
    """P ranks: `dies_per_gpu` (g1) dies per GPU, `ranks_per_node` (g2) dies per node."""

    num_ranks: int = 32
    dies_per_gpu: int = 2
    ranks_per_node: int = 8
    die: Link = Link(2e-6, 200e9)
    gpu: Link = Link(3e-6, 75e9)
    node: Link = Link(10e-6, 12.5e9)

    def __post_init__(self):
        g1, g2, p = self.dies_per_gpu, self.ranks_per_node, self.num_ranks
        if g1 < 1 or g2 % g1 or p % g2:
            raise ValueError(f"dies_per_gpu={g1!r}, ranks_per_node={g2!r}, num_ranks={p!r} are invalid: expected "
                             "dies_per_gpu | ranks_per_node | num_ranks")

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Level group sizes for a hierarchical reduction: dies, GPUs per node, nodes."""
        return (self.dies_per_gpu, self.ranks_per_node // self.dies_per_gpu, self.num_ranks // self.ranks_per_node)

    def tier(self, a: int, b: int) -> str:
        if a // self.dies_per_gpu == b // self.dies_per_gpu:
            return "die"
        return "gpu" if a // self.ranks_per_node == b // self.ranks_per_node else "node"

    def link(self, tier: str) -> Link:
        return {"die": self.die, "gpu": self.gpu, "node": self.node}[tier]

    def cost(self, op: str, payload: float, groups: list[list[int]] | None) -> tuple[float, dict]:
        """(seconds, {tier: (P,) bytes sent}) of one collective run inside each group at once: a ring for
        all_gather / reduce_scatter / all_reduce, pairwise exchanges for all_to_all; a step lasts as long as
        its slowest message, the call as long as its slowest group."""
        groups = groups or [list(range(self.num_ranks))]
        sent = {t: np.zeros(self.num_ranks) for t in TIERS}
        seconds = 0.0
        for g in groups:
            p = len(g)
            if p == 1:
                continue
            if op == "all_to_all":
                chunk, t = payload / p, 0.0
                for k in range(1, p):
                    hops = [(g[i], g[(i + k) % p]) for i in range(p)]
                    for a, b in hops:
                        sent[self.tier(a, b)][a] += chunk
                    t += max(self.link(self.tier(a, b)).time(chunk) for a, b in hops)
            else:
                per_rank, steps, step_bytes = {
                    "all_gather": ((p - 1) * payload, p - 1, payload),
                    "reduce_scatter": ((p - 1) / p * payload, p - 1, payload / p),
                    "all_reduce": (2 * (p - 1) / p * payload, 2 * (p - 1), payload / p),
                }[op]
                hops = [(g[i], g[(i + 1) % p]) for i in range(p)]
                for a, b in hops:
                    sent[self.tier(a, b)][a] += per_rank
                t = steps * max(self.link(self.tier(a, b)).time(step_bytes) for a, b in hops)
            seconds = max(seconds, t)
        return seconds, sent


def scheme_calls(scheme: str, num_params: int, net: ThreeLevel, *, secondary_level: int = 1, qgz: bool = False,
                 param_bytes: int = 2, grad_bytes: int = 2, units: int = 1, quant_block: int = 256) -> list[Call]:
    """One step's collectives (per unit, `units` of them) for 'zero3', 'zeropp' (hpZ in the node and the
    2-hop node/global gradient reduction, ZeRO++) or 'frontier' (secondary copy on `secondary_level`, 3-hop
    gradient reduction)."""
    if scheme not in ("zero3", "zeropp", "frontier"):
        raise ValueError(f"scheme={scheme!r} is invalid: expected 'zero3', 'zeropp' or 'frontier'")
    if secondary_level not in (1, 2):
        raise ValueError(f"secondary_level={secondary_level!r} is invalid: expected 1 (dies) or 2 (node)")
    p, (g1, _, n) = net.num_ranks, net.sizes
    unit = -(-num_params // units)
    unit = -(-unit // p) * p
    c = unit // p
    calls = [Call("all_gather", param_bytes * c, None, "params_fwd", units)]
    if scheme == "zero3":
        return calls + [Call("all_gather", param_bytes * c, None, "params_bwd", units),
                        Call("reduce_scatter", grad_bytes * unit, None, "grads", units)]
    h = net.ranks_per_node if scheme == "zeropp" or secondary_level == 2 else g1
    calls.append(Call("all_gather", param_bytes * unit // h, contiguous_groups(p, h), "params_bwd", units))
    sizes = (net.ranks_per_node, n) if scheme == "zeropp" else net.sizes
    width = unit
    for groups, g in zip(level_groups(p, sizes), sizes):
        if g == 1:
            continue
        chunk = width // g
        payload = g * quant_bytes(chunk, 4, quant_block) if qgz else grad_bytes * width
        calls.append(Call("all_to_all", payload, groups, "grads", units))
        width = chunk
    return calls


def price(calls: list[Call], net: ThreeLevel) -> dict:
    """Seconds and mean bytes per rank on each tier of a step's calls (no overlap)."""
    out = {"seconds": 0.0, **{f"bytes_{t}": 0.0 for t in TIERS}}
    for call in calls:
        seconds, sent = net.cost(call.op, call.payload, call.groups)
        out["seconds"] += call.count * seconds
        for t in TIERS:
            out[f"bytes_{t}"] += call.count * float(sent[t].mean())
    return out


def compare(num_params: int, net: ThreeLevel | None = None, *, secondary_level: int = 1, qgz: bool = False,
            units: int = 1) -> list[dict]:
    """ZeRO-3, ZeRO++ and the 3-level scheme side by side: bytes per rank per tier, communication seconds,
    and the secondary copy's memory per rank (bf16)."""
    net = net or ThreeLevel()
    rows = []
    for scheme in ("zero3", "zeropp", "frontier"):
        calls = scheme_calls(scheme, num_params, net, secondary_level=secondary_level, qgz=qgz, units=units)
        h = {"zero3": 0, "zeropp": net.ranks_per_node,
             "frontier": net.ranks_per_node if secondary_level == 2 else net.dies_per_gpu}[scheme]
        rows.append({"scheme": scheme, **price(calls, net), "secondary_bytes": 2 * num_params / h if h else 0.0})
    return rows
