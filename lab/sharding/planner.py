"""A sharding planner in the spirit of InternEvo's cost model: memory per rank and step time for every
sharding configuration of a model on a topology, ranked.

Paper: Chen et al., "InternEvo: Efficient Long-sequence Large Language Model
Training via Hybrid Parallelism and Redundant Sharding" (arXiv 2401.09149);
spec §A5. Its search space: ZeRO stage and sharding degree S (R = P/S
replicas) with ZeRO++ hpZ / qwZ / qgZ; InternEvo's independent degrees of
each model state (parameters and gradients over wp ranks, optimizer states
over o, `state_collectives`); the sequence-parallel degree G and method
(lab.sequence: ring, TokenRing, BurstAttention, Ulysses, USP, LSS); and
activation recomputation. The paper's exact cost terms were not checked
(spec: [UNVERIFIED] in detail); the model below is this lab's:

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
  the compute time: step = compute + max(0, overlappable − compute) + exposed;
- sequence parallelism: a rank holds and computes s/G tokens of a sample
  (activations: `lab.sharding.memory.activation_bytes` with the method's
  buffers), and each layer's attention traffic is the method's schedule
  (`lab.sequence.cost.layer_cost`); what its compute cannot hide is exposed.
  Candidates with different G carry different tokens per step, so `plan`
  ranks by throughput, `tokens_per_s`.
ByteScale's hybrid data parallelism for mixed sequence lengths is a separate
what-if: `lab.sharding.bytescale`.

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
from lab.sharding.memory import (
    MIXED_ADAM,
    RECOMPUTE,
    SP_METHODS,
    ModelShape,
    Partition,
    Profile,
    activation_bytes,
    memory_per_rank,
)
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


def state_collectives(num_params: int, world_size: int, *, param_degree: int, grad_degree: int,
                      optimizer_degree: int, units: int = 1, param_bytes: int = 2, grad_bytes: int = 2) -> list[Call]:
    """The collectives of one step when parameters, gradients and optimizer states each have their own sharding
    degree p | g | o | P (InternEvo's wp for parameters and gradients and wp·z for optimizer states, spec §A5;
    ZeRO stage 1, 2, 3 with degree S are (1, 1, S), (1, S, S), (S, S, S) and DDP (1, 1, 1), for which this is
    `step_collectives` — tests/test_planner_axes.py). Per unit: parameters all-gathered in p-blocks (forward and
    backward); gradients reduce-scattered in g-blocks, then from the g-shard to the o-shard inside each o-block,
    then all-reduced across the P/o replicas of the o-shard; after the step the updated o-shard is all-gathered
    back to the p-shard (not overlapped)."""
    p_, g, o, world = param_degree, grad_degree, optimizer_degree, world_size
    for name, v in (("param_degree", p_), ("grad_degree", g), ("optimizer_degree", o)):
        if v < 1 or world % v:
            raise ValueError(f"{name}={v!r} is invalid: expected a divisor of the world size {world}: "
                             f"{divisors(world)}")
    if g % p_ or o % g:
        raise ValueError(f"param_degree={p_}, grad_degree={g}, optimizer_degree={o} are invalid: each must divide "
                         "the next (p | g | o)")
    unit = -(-num_params // units)
    unit = -(-unit // o) * o  # padded to the optimizer shards
    whole = lambda gs: None if len(gs) == 1 else gs  # noqa: E731  (one group of every rank: the plain collective)
    blocks = lambda k: [list(range(b, b + k)) for b in range(0, world, k)]  # noqa: E731
    calls = []
    if p_ > 1:
        for tag in ("params_fwd", "params_bwd"):
            calls.append(Call("all_gather", param_bytes * unit // p_, whole(blocks(p_)), tag, units))
    if g > 1:
        calls.append(Call("reduce_scatter", grad_bytes * unit, whole(blocks(g)), "grads", units))
    if o > g:  # inside each o-block, the ranks holding the same g-shard
        inner = [[b + j + i * g for i in range(o // g)] for b in range(0, world, o) for j in range(g)]
        calls.append(Call("reduce_scatter", grad_bytes * unit // g, whole(inner), "grads", units))
    if o < world:
        replicas = [list(range(j, world, o)) for j in range(o)]
        calls.append(Call("all_reduce", grad_bytes * unit // o, whole(replicas), "grads" if o == 1 else
                          "grads_replicas", units))
    if p_ < o:
        gather = [[b + j + i * p_ for i in range(o // p_)] for b in range(0, world, o) for j in range(p_)]
        calls.append(Call("all_gather", param_bytes * unit // o, whole(gather), "params", units, overlap=False))
    return calls


def sp_comm(shape: ModelShape, topology: Topology, *, sp_degree: int, sp_method: str, micro_batch: int,
            seq_len: int) -> dict:
    """Sequence-parallel attention of every layer, forward and backward (lab.sequence.cost.layer_cost over SP
    groups of `sp_degree` consecutive ranks, zigzag layout for the ring family): bytes per rank and the seconds
    its compute cannot hide (the method's simulated time minus its attention compute)."""
    from lab.sequence.cost import layer_cost

    groups = [list(range(b, b + sp_degree)) for b in range(0, topology.num_ranks, sp_degree)]
    c = layer_cost(sp_method, topology=topology, batch=micro_batch, seq=seq_len, heads=shape.heads,
                   head_dim=shape.head_dim, kv_heads=shape.kv_heads, groups=groups, causal=True,
                   layout="zigzag" if sp_method in ("ring", "token_ring", "burst") else "contiguous",
                   bytes_per_element=2, ulysses_degree=min(topology.ranks_per_node, sp_degree))
    layers = shape.num_layers
    return {"sp_bytes": layers * c["bytes_per_rank"], "sp_comm_s": layers * c["comm_seconds"],
            "sp_exposed_s": layers * max(0.0, c["sim_seconds"] - c["compute_seconds"])}


@dataclass(frozen=True)
class Candidate:
    """A configuration: ZeRO `stage` with sharding degree S (+ ZeRO++), or — with `param_degree` > 0 — each model
    state sharded on its own (InternEvo: parameters and gradients over wp = param_degree = grad_degree, optimizer
    states over optimizer_degree); activation recomputation; sequence parallelism of degree `sp_degree` with
    `sp_method` (lab.sequence)."""

    stage: int
    sharding_degree: int
    hpz_size: int = 0
    qwz: bool = False
    qgz: bool = False
    recompute: str = "selective"
    sp_degree: int = 1
    sp_method: str = "ulysses"
    param_degree: int = 0
    grad_degree: int = 0
    optimizer_degree: int = 0

    @property
    def degrees(self) -> tuple[int, int, int]:
        """(params, grads, optimizer) sharding degrees."""
        if self.param_degree:
            return self.param_degree, self.grad_degree, self.optimizer_degree
        part = Partition.zero(self.stage, self.sharding_degree)
        return part.params, part.grads, part.optimizer

    @property
    def label(self) -> str:
        extras = [k for k, on in (("hpz", self.hpz_size), ("qwz", self.qwz), ("qgz", self.qgz)) if on]
        if self.param_degree:
            name = f"wp={self.param_degree} os={self.optimizer_degree}"
        else:
            name = "DDP" if self.stage == 0 else f"ZeRO-{self.stage} S={self.sharding_degree}"
        sp = [f"SP={self.sp_degree} {self.sp_method}"] if self.sp_degree > 1 else []
        return " ".join([name] + extras + sp + [f"recompute={self.recompute}"])


def candidates(world_size: int, ranks_per_node: int, *, sp_degrees=(1,), sp_methods=("ulysses",),
               per_state: bool = False) -> list[Candidate]:
    """Every configuration the planner considers on `world_size` ranks: ZeRO stages and ZeRO++ (and, with
    `per_state`, InternEvo's independent degrees wp | o with wp > 1, o > wp), each with every recomputation
    and every sequence-parallel degree and method given (degree 1: no SP)."""
    sharding = [(0, 1, 0, False, False, 0, 0)]
    for stage in (1, 2, 3):
        for s in divisors(world_size)[1:]:
            hpzs = (0, ranks_per_node) if stage == 3 and ranks_per_node < s else (0,)
            for hpz in hpzs:
                for qwz in ((False, True) if stage == 3 else (False,)):
                    for qgz in ((False, True) if stage == 3 and s == world_size and ranks_per_node < s
                                else (False,)):
                        sharding.append((stage, s, hpz, qwz, qgz, 0, 0))
    if per_state:
        sharding += [(3, wp, 0, False, False, wp, o) for wp in divisors(world_size)[1:]
                     for o in divisors(world_size) if o > wp and o % wp == 0]
    sp = [(1, "ulysses")] + [(g, m) for g in sp_degrees if g > 1 for m in sp_methods]
    out = []
    for recompute in RECOMPUTE:
        for stage, s, hpz, qwz, qgz, wp, o in sharding:
            for g, m in sp:
                out.append(Candidate(stage, s, hpz, qwz, qgz, recompute, g, m, wp, wp, o))
    return out


def evaluate(shape: ModelShape, topology: Topology, cand: Candidate, *, memory_cap: float, micro_batch: int = 1,
             seq_len: int | None = None, profile: Profile = MIXED_ADAM, cache: dict | None = None) -> dict:
    """Memory, time and bytes of one candidate. With sequence parallelism of degree G a rank holds and computes
    s/G tokens of a sample (P/G samples per step) and sends the method's attention traffic (`sp_comm`);
    `tokens_per_s` (the step's tokens over its time) compares candidates with different G. `cache`: a dict
    shared by calls with the same shape, topology, sizes and profile (`plan` passes one)."""
    cache = {} if cache is None else cache
    p, d = topology.num_ranks, topology.ranks_per_node
    seq_len = seq_len or shape.seq_len
    units = max(shape.num_layers, 1)
    g = cand.sp_degree
    pd_, gd, od = cand.degrees
    part = Partition(params=pd_, grads=gd, optimizer=od, secondary=cand.hpz_size if cand.stage == 3 else 0)
    acts = activation_bytes(shape, micro_batch=micro_batch, seq_len=seq_len, recompute=cand.recompute,
                            sp_degree=g, sp_method=cand.sp_method)
    mem = memory_per_rank(shape, part, profile, activations=acts)
    kw = dict(units=units, param_bytes=int(profile.param), grad_bytes=int(profile.grad))
    key = ("comm", cand.stage, cand.sharding_degree, cand.hpz_size, cand.qwz, cand.qgz, cand.param_degree, od)
    if key not in cache:
        if cand.param_degree:
            calls = state_collectives(shape.num_params, p, param_degree=pd_, grad_degree=gd, optimizer_degree=od,
                                      **kw)
        else:
            calls = step_collectives(shape.num_params, p, stage=cand.stage, sharding_degree=cand.sharding_degree,
                                     ranks_per_node=d, hpz_size=cand.hpz_size, qwz=cand.qwz, qgz=cand.qgz, **kw)
        cache[key] = price(calls, topology)
    comm = cache[key]
    compute = topology.compute_seconds(step_flops(shape, micro_batch=micro_batch, seq_len=seq_len,
                                                  recompute=cand.recompute) / g)
    key = ("sp", g, cand.sp_method)
    if key not in cache:
        cache[key] = sp_comm(shape, topology, sp_degree=g, sp_method=cand.sp_method, micro_batch=micro_batch,
                             seq_len=seq_len) if g > 1 else {"sp_bytes": 0.0, "sp_comm_s": 0.0, "sp_exposed_s": 0.0}
    sp = cache[key]
    step = compute + max(0.0, comm["overlap_s"] - compute) + comm["exposed_s"] + sp["sp_exposed_s"]
    return {"config": cand.label, "stage": cand.stage, "sharding_degree": cand.sharding_degree,
            "replication_degree": p // cand.sharding_degree, "hpz_size": cand.hpz_size, "qwz": cand.qwz,
            "qgz": cand.qgz, "recompute": cand.recompute, "sp_degree": g, "sp_method": cand.sp_method if g > 1 else "",
            "param_degree": pd_, "grad_degree": gd, "optimizer_degree": od, "memory_gb": mem.total / 1e9,
            "states_gb": mem.states / 1e9, "activations_gb": acts / 1e9,
            "buffers_gb": (mem.buffers + mem.transient) / 1e9, "fits": mem.total <= memory_cap,
            "compute_s": compute, "comm_s": comm["overlap_s"] + comm["exposed_s"] + sp["sp_comm_s"],
            "exposed_s": comm["exposed_s"] + sp["sp_exposed_s"], "step_s": step,
            "tokens_per_s": (p // g) * micro_batch * seq_len / step,
            "bytes_intra": comm["bytes_intra"], "bytes_inter": comm["bytes_inter"], "sp_bytes": sp["sp_bytes"]}


def plan(shape: ModelShape, topology: Topology, *, memory_cap: float, micro_batch: int = 1,
         seq_len: int | None = None, profile: Profile = MIXED_ADAM, sp_degrees=None, sp_methods=None,
         per_state: bool = True) -> pd.DataFrame:
    """Every candidate, those that fit first, each group ranked by predicted throughput (tokens per second; for
    equal SP degrees, by step time). sp_degrees: the sequence-parallel degrees to try (default: every divisor of
    the ranks that divides the sequence, when it is at least 8k tokens; else none); sp_methods: default every
    method of `lab.sharding.memory.SP_METHODS` that applies (Ulysses and USP need heads divisible by their
    all-to-all group)."""
    if memory_cap <= 0 or not math.isfinite(memory_cap):
        raise ValueError(f"memory_cap={memory_cap!r} is invalid: expected bytes per rank > 0")
    p, seq = topology.num_ranks, seq_len or shape.seq_len
    if sp_degrees is None:
        sp_degrees = [g for g in divisors(p)[1:] if seq % (2 * g) == 0] if seq >= 8192 else []
    for g in sp_degrees:
        if g < 1 or p % g or seq % g:
            raise ValueError(f"sp_degrees contains {g!r}: expected divisors of the {p} ranks that divide the "
                             f"sequence length {seq}")
    methods = tuple(sp_methods or SP_METHODS)
    unknown = [m for m in methods if m not in SP_METHODS]
    if unknown:
        raise ValueError(f"sp_methods={list(methods)!r} is invalid: expected some of {list(SP_METHODS)}")
    rows, cache = [], {}
    for c in candidates(p, topology.ranks_per_node, sp_degrees=tuple(sp_degrees), sp_methods=methods,
                        per_state=per_state):
        a2a = {"ulysses": c.sp_degree, "usp": min(topology.ranks_per_node, c.sp_degree)}.get(c.sp_method, 1)
        if c.sp_degree > 1 and shape.heads % a2a:
            continue
        rows.append(evaluate(shape, topology, c, memory_cap=memory_cap, micro_batch=micro_batch, seq_len=seq_len,
                             profile=profile, cache=cache))
    df = pd.DataFrame(rows)
    return df.sort_values(["fits", "tokens_per_s", "memory_gb"], ascending=[False, False, True], kind="stable") \
             .reset_index(drop=True)
