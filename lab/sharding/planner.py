"""A sharding planner in the spirit of InternEvo's cost model: memory per rank and step time for every
sharding configuration of a model on a topology, ranked.

Paper: Chen et al., "InternEvo: Efficient Long-sequence Large Language Model
Training via Hybrid Parallelism and Redundant Sharding" (arXiv 2401.09149);
spec §A5. Its search space (weight-parallel, ZeRO-1 and sequence-parallel
degrees) is reduced here to the sharding family of this package: ZeRO stage,
sharding degree S (R = P/S replicas), ZeRO++ hpZ / qwZ / qgZ, and activation
recomputation. The paper's exact cost terms were not checked (spec: [UNVERIFIED]
in detail); the model below is this lab's:

- memory: `lab.sharding.memory` (model states, gathered units with one unit of
  prefetch, hpZ's secondary copy, Korthikanti activations) — a configuration
  fits when it is at most `memory_cap` bytes per rank;
- compute: 6·N_active FLOPs per token plus attention (12·L·s·h per token), a
  recomputed forward for full recomputation (+1/3) or the attention core for
  selective recomputation, over the topology's device FLOP/s;
- communication: the collectives of `step_collectives`, one call per unit (a
  transformer block), each costed by the Topology for its groups
  (`lab.comm.collective.group_cost`: bytes per link class, α-β time);
- overlap: gathers and gradient reductions run during the forward and backward
  (prefetching the next unit), so they hide behind compute; what cannot hide
  is the first unit's gather, the last unit's reduction, the parameter
  all-gather after the optimizer step (stages 1–2) and communication beyond
  the compute time: step = compute + max(0, overlappable − compute) + exposed.

`step_collectives` is also what the ZeRO technique sends: for the lab models (one
unit, fp32) its bytes equal the Ledger's (tests/test_planner.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lab.comm.collective import group_cost
from lab.sharding.layout import ShardLayout, divisors, level_groups
from lab.sharding.memory import MIXED_ADAM, RECOMPUTE, ModelShape, Partition, Profile, activation_bytes, memory_per_rank
from lab.topology import LINK_CLASSES, Topology


@dataclass(frozen=True)
class Call:
    """One collective of a step: `op` with `payload` bytes per rank inside `groups` (None: all ranks),
    issued `count` times; `overlap`: whether it can run behind compute."""

    op: str
    payload: float
    groups: list | None
    tag: str
    count: int = 1
    overlap: bool = True


def quant_bytes(n: int, bits: int, block: int) -> int:
    """Bytes of n values quantized to `bits` with one fp32 scale per `block` values."""
    return math.ceil(n * bits / 8) + 4 * math.ceil(n / block)


def step_collectives(num_params: int, world_size: int, *, stage: int, sharding_degree: int, ranks_per_node: int,
                     hpz_size: int = 0, qwz: bool = False, qgz: bool = False, units: int = 1,
                     param_bytes: int = 2, grad_bytes: int = 2, quant_block: int = 256) -> list[Call]:
    """The collectives one training step issues, per rank, for a model of `num_params` gathered in `units`
    equal units (the lab: 1 unit, 4-byte params and grads)."""
    p, s = world_size, sharding_degree
    lay = ShardLayout(p, s, hpz_size if stage == 3 else 0)
    unit = -(-num_params // units)
    unit = lay.padded(unit)
    c = unit // s
    shard = None if s == p else lay.shard_groups()
    calls = []
    if stage == 0:
        return [Call("all_reduce", grad_bytes * unit, None, "grads", units)]
    if stage == 3 and s > 1:
        fwd = quant_bytes(c, 8, quant_block) if qwz else param_bytes * c
        calls.append(Call("all_gather", fwd, shard, "params_fwd", units))
        if lay.hpz_size:
            calls.append(Call("all_gather", param_bytes * unit // lay.hpz_size, lay.hpz_groups(), "params_bwd", units))
        else:
            calls.append(Call("all_gather", fwd, shard, "params_bwd", units))
    if qgz:
        d, nodes = ranks_per_node, p // ranks_per_node
        m = unit // p  # one partition
        levels = level_groups(p, (d, nodes))
        for g, groups, width in ((d, levels[0], m * nodes), (nodes, levels[1], m)):
            if g > 1:
                calls.append(Call("all_to_all", g * quant_bytes(width, 4, quant_block),
                                  groups if len(groups) > 1 else None, "grads", units))
    elif s > 1:
        calls.append(Call("reduce_scatter", grad_bytes * unit, shard, "grads", units))
    if lay.replication_degree > 1:
        calls.append(Call("all_reduce", grad_bytes * c, lay.replica_groups() if s > 1 else None, "grads_replicas",
                          units))
    if stage in (1, 2) and s > 1:
        calls.append(Call("all_gather", param_bytes * c, shard, "params", units, overlap=False))
    return calls


def price(calls: list[Call], topology: Topology) -> dict:
    """Seconds (overlappable, exposed) and bytes per rank (the mean over ranks) per link class of a step's
    collectives."""
    out = {"overlap_s": 0.0, "exposed_s": 0.0, **{f"bytes_{k}": 0.0 for k in LINK_CLASSES}}
    for call in calls:
        groups = call.groups or [list(range(topology.num_ranks))]
        cost = group_cost(topology, call.op, int(round(call.payload)), groups)
        for k in LINK_CLASSES:
            out[f"bytes_{k}"] += call.count * float(np.mean(cost.bytes[k]))  # per rank, averaged over ranks
        if call.overlap and call.count > 1:  # one unit's call cannot hide: the first gather / last reduction
            out["overlap_s"] += (call.count - 1) * cost.seconds
            out["exposed_s"] += cost.seconds
        elif call.overlap:
            out["exposed_s"] += cost.seconds
        else:
            out["exposed_s"] += call.count * cost.seconds
    return out


def step_flops(shape: ModelShape, *, micro_batch: int, seq_len: int, recompute: str) -> float:
    """FLOPs of one rank's step: 6·N_active + 12·L·s·h per token; recomputation adds a forward (full) or the
    attention core's forward 4·L·s·h per token (selective)."""
    tokens = micro_batch * seq_len
    attn = 12 * shape.num_layers * seq_len * shape.hidden
    flops = tokens * (6 * shape.active_params + attn)
    if recompute == "full":
        flops += tokens * (2 * shape.active_params + attn / 3)
    elif recompute == "selective":
        flops += tokens * attn / 3
    return float(flops)


@dataclass(frozen=True)
class Candidate:
    stage: int
    sharding_degree: int
    hpz_size: int = 0
    qwz: bool = False
    qgz: bool = False
    recompute: str = "selective"

    @property
    def label(self) -> str:
        extras = [k for k, on in (("hpz", self.hpz_size), ("qwz", self.qwz), ("qgz", self.qgz)) if on]
        name = "DDP" if self.stage == 0 else f"ZeRO-{self.stage} S={self.sharding_degree}"
        return " ".join([name] + extras + [f"recompute={self.recompute}"])


def candidates(world_size: int, ranks_per_node: int) -> list[Candidate]:
    """Every configuration the planner considers on `world_size` ranks."""
    out = []
    for recompute in RECOMPUTE:
        out.append(Candidate(0, 1, recompute=recompute))
        for stage in (1, 2, 3):
            for s in divisors(world_size)[1:]:
                hpzs = (0, ranks_per_node) if stage == 3 and ranks_per_node < s else (0,)
                for hpz in hpzs:
                    for qwz in ((False, True) if stage == 3 else (False,)):
                        for qgz in ((False, True) if stage == 3 and s == world_size and ranks_per_node < s
                                    else (False,)):
                            out.append(Candidate(stage, s, hpz, qwz, qgz, recompute))
    return out


def evaluate(shape: ModelShape, topology: Topology, cand: Candidate, *, memory_cap: float, micro_batch: int = 1,
             seq_len: int | None = None, profile: Profile = MIXED_ADAM) -> dict:
    """Memory, time and bytes of one candidate."""
    p, d = topology.num_ranks, topology.ranks_per_node
    seq_len = seq_len or shape.seq_len
    units = max(shape.num_layers, 1)
    part = Partition.zero(cand.stage, cand.sharding_degree, hpz_size=cand.hpz_size)
    acts = activation_bytes(shape, micro_batch=micro_batch, seq_len=seq_len, recompute=cand.recompute)
    mem = memory_per_rank(shape, part, profile, activations=acts)
    calls = step_collectives(shape.num_params, p, stage=cand.stage, sharding_degree=cand.sharding_degree,
                             ranks_per_node=d, hpz_size=cand.hpz_size, qwz=cand.qwz, qgz=cand.qgz, units=units,
                             param_bytes=int(profile.param), grad_bytes=int(profile.grad))
    comm = price(calls, topology)
    compute = topology.compute_seconds(step_flops(shape, micro_batch=micro_batch, seq_len=seq_len,
                                                  recompute=cand.recompute))
    step = compute + max(0.0, comm["overlap_s"] - compute) + comm["exposed_s"]
    return {"config": cand.label, "stage": cand.stage, "sharding_degree": cand.sharding_degree,
            "replication_degree": p // cand.sharding_degree, "hpz_size": cand.hpz_size, "qwz": cand.qwz,
            "qgz": cand.qgz, "recompute": cand.recompute, "memory_gb": mem.total / 1e9,
            "states_gb": mem.states / 1e9, "activations_gb": acts / 1e9,
            "buffers_gb": (mem.buffers + mem.transient) / 1e9, "fits": mem.total <= memory_cap,
            "compute_s": compute, "comm_s": comm["overlap_s"] + comm["exposed_s"], "exposed_s": comm["exposed_s"],
            "step_s": step, "bytes_intra": comm["bytes_intra"], "bytes_inter": comm["bytes_inter"]}


def plan(shape: ModelShape, topology: Topology, *, memory_cap: float, micro_batch: int = 1,
         seq_len: int | None = None, profile: Profile = MIXED_ADAM) -> pd.DataFrame:
    """Every candidate, those that fit first, each group ranked by predicted step time."""
    if memory_cap <= 0:
        raise ValueError(f"memory_cap={memory_cap!r} is invalid: expected bytes per rank > 0")
    rows = [evaluate(shape, topology, c, memory_cap=memory_cap, micro_batch=micro_batch, seq_len=seq_len,
                     profile=profile) for c in candidates(topology.num_ranks, topology.ranks_per_node)]
    df = pd.DataFrame(rows)
    return df.sort_values(["fits", "step_s", "memory_gb"], ascending=[False, True, True], kind="stable") \
             .reset_index(drop=True)
