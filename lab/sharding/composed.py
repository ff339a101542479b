"""What a composed run sends and holds, predicted without training: bytes per step per link class, memory per rank.

A composed run (`lab.sync.sharded`) is sharding of degree S inside each of R = P/S replicas and a sync
technique with period H across them, through a compressor, on a topology. Per step it issues:

- inside each replica, the sharded step's collectives (`lab.sharding.planner.step_collectives`, one unit =
  the whole model, fp32): stages 1–2 a reduce-scatter of the gradient and an all-gather of the updated
  slices in the shard group; stage 3 two all-gathers (forward; backward, inside the hpZ group with hpZ;
  int8 with qwZ) and the reduce-scatter; with `grad_clip` an all-reduce of one float64 per rank;
- across replicas, every H steps (DDP: every step), each rank's shard — c = d_pad/S values, or c/P per
  fragment of Streaming DiLoCo — averaged with its R − 1 counterparts: a dense fp32 all-reduce in the replica
  groups, a half-precision one for fp16/bf16, or the compressed all-reduce inside the groups
  (`lab.compress.grouped`: the plan a run builds, its message sizes from the compressors themselves on a
  zero vector — sizes depend on the length and layout, not on the values).

Each call is costed by the Topology for its groups (the same schedules the Ledger records), so
`predict_bytes(...)` × steps equals the Ledger's bytes per link class of a run whose steps are a multiple of
H (tests/test_composed.py). With S = 1 it is the technique's own exchange over all ranks; technique 'zero' is
the sharded step with a dense all-reduce of the slices across replicas every step. Analytic: no model is
built and nothing is trained; the compressed plan of a layout is cached.

`predict_memory` is `lab.sharding.memory.lab_memory` (what the sharded step holds) plus the technique's own
sync state on its shard ('sync': Local SGD's anchor, DiLoCo's global copy and outer momentum, 4c bytes each).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from lab.comm.collective import group_cost, merge_costs
from lab.sharding.layout import ShardLayout
from lab.sharding.memory import lab_memory
from lab.sharding.options import parse_zeropp
from lab.sharding.planner import step_collectives
from lab.topology import LINK_CLASSES, Topology

#: the techniques predicted here: their sync every H steps ('ddp' and 'zero': every step)
TECHNIQUES = ("ddp", "zero", "local_sgd", "diloco", "streaming_diloco")
#: the sync state each technique keeps on its shard, in vectors of c values
SYNC_VECTORS = {"ddp": 0, "zero": 0, "local_sgd": 1, "qsr": 1, "diloco": 2, "streaming_diloco": 2}
#: Streaming DiLoCo's outer_bits as the compressor it names (lab.sync.streaming_diloco)
OUTER_BITS = {16: "fp16", 8: "int8"}
OUTER_FORMATS = {"e3m0": "fp4", "int4": "int4"}


def composed_calls(*, technique: str, num_params: int, topology: Topology, sharding_degree: int,
                   zero_stage: int = 3, sync_period: int = 1, compressor: str = "none",
                   compression_ratio: float = 1.0, compress_scope: str = "layer", error_feedback: str = "ef",
                   zeropp: str = "none", hpz_size: int = 0, quant_block: int = 256, num_fragments: int = 1,
                   outer_bits: int = 32, outer_format: str = "e3m0", grad_clip: bool = False,
                   numels: tuple | None = None) -> list[dict]:
    """Every collective of a composed run as rows {tag, op, every, algorithm, intra, inter, uplink, downlink}:
    the bytes (summed over ranks) of one call, issued once every `every` steps. `sharding_degree` is S itself
    (1: no sharding); `hpz_size` the hpZ group (0: none); `numels`: the model's parameter-tensor lengths, for
    per-layer compression (default: one tensor)."""
    if technique not in TECHNIQUES:
        raise ValueError(f"technique={technique!r} is invalid here: expected one of {list(TECHNIQUES)}")
    p, s = topology.num_ranks, sharding_degree
    if s < 1 or p % s:
        raise ValueError(f"sharding_degree={s!r} is invalid: expected a divisor of the {p} ranks")
    flags = parse_zeropp(zeropp)
    every = 1 if technique in ("ddp", "zero") else sync_period
    rows = []
    if s > 1 or technique == "zero":
        for call in step_collectives(num_params, p, stage=zero_stage, sharding_degree=s,
                                     ranks_per_node=topology.ranks_per_node, hpz_size=hpz_size, qwz="qwz" in flags,
                                     qgz="qgz" in flags, param_bytes=4, grad_bytes=4, quant_block=quant_block):
            if call.tag == "grads_replicas" and technique != "zero":
                continue  # the composed exchange below
            rows.append(_row(call.tag, call.op, 1, group_cost(topology, call.op, int(call.payload),
                                                             call.groups or [list(range(p))])))
        if grad_clip and s > 1:
            shard = ShardLayout(p, s).shard_groups()
            rows.append(_row("grad_norm", "all_reduce", 1, group_cost(topology, "all_reduce", 8, shard)))
    if technique == "zero":
        return rows
    lay = ShardLayout(p, s, hpz_size)
    if lay.replication_degree == 1:
        return rows
    c = lay.padded(num_params) // s if s > 1 else num_params
    groups = lay.replica_groups() if s > 1 else [list(range(p))]
    numels = tuple(numels) if numels is not None else (num_params,)
    if technique == "streaming_diloco" and outer_bits != 32:
        compressor = OUTER_FORMATS[outer_format] if outer_bits == 4 else OUTER_BITS[outer_bits]
        error_feedback = "none"
    parts = [(0, c)] if technique != "streaming_diloco" or num_fragments == 1 else \
        [(round(c * q / num_fragments), round(c * (q + 1) / num_fragments)) for q in range(num_fragments)]
    if technique == "streaming_diloco" and num_fragments > 1 and s == 1:
        raise ValueError("streaming_diloco with num_fragments > 1 and no sharding syncs layer fragments: not "
                         "predicted here")
    tag = {"ddp": "grads_replicas" if s > 1 else "grads", "local_sgd": "params" if compressor == "none"
           else "pseudo_grad", "diloco": "pseudo_grad"}.get(technique, "fragment")
    for q, (lo, hi) in enumerate(parts):
        segments = tuple(_clip(numels, g_index * c + lo, g_index * c + hi) if s > 1 else numels
                         for g_index in range(len(groups)))
        algorithm, cost = _exchange_cost(compressor, compression_ratio, compress_scope, error_feedback,
                                         hi - lo, segments, tuple(tuple(g) for g in groups), topology)
        rows.append(_row(f"fragment{q}" if tag == "fragment" else tag, algorithm, every, cost))
    return rows


def predict_bytes(**kw) -> dict[str, float]:
    """Bytes per step on each link class, summed over ranks, averaged over a sync period (arguments of
    `composed_calls`)."""
    out = {k: 0.0 for k in LINK_CLASSES}
    for row in composed_calls(**kw):
        for k in LINK_CLASSES:
            out[k] += row[k] / row["every"]
    return out


def predict_for_config(config, *, num_params: int, numels=None) -> dict[str, float]:
    """`predict_bytes` of an ExperimentConfig (its topology with pinned algorithms, lab.topology.for_config)."""
    return predict_bytes(**config_kwargs(config, num_params=num_params, numels=numels))


def calls_for_config(config, *, num_params: int, numels=None) -> list[dict]:
    """`composed_calls` of an ExperimentConfig (each row also carries the call's simulated `seconds`)."""
    return composed_calls(**config_kwargs(config, num_params=num_params, numels=numels))


def config_kwargs(config, *, num_params: int, numels=None) -> dict:
    """The `composed_calls` arguments of an ExperimentConfig."""
    from lab.sharding.options import degree, hpz_size_of
    from lab.topology import for_config

    t = for_config(config)
    sharded = degree(config) > 1 or config.technique == "zero"
    kw = dict(technique=config.technique, num_params=num_params, topology=t, sharding_degree=degree(config),
              zero_stage=config.zero_stage, grad_clip=bool(config.grad_clip), numels=numels,
              zeropp=config.zeropp if sharded else "none", hpz_size=hpz_size_of(config, t) if sharded else 0,
              quant_block=config.quant_block)
    if config.technique != "zero":
        kw.update(compressor=config.compressor, compression_ratio=config.compression_ratio,
                  compress_scope=config.compress_scope, error_feedback=config.error_feedback)
    if config.technique in ("local_sgd", "diloco", "streaming_diloco"):
        kw["sync_period"] = config.sync_period
    if config.technique == "streaming_diloco":
        kw.update(num_fragments=config.num_fragments, outer_bits=config.outer_bits, outer_format=config.outer_format)
    return kw


def predict_memory(num_params: int, *, technique: str, zero_stage: int, sharding_degree: int,
                   optimizer: str = "adamw", momentum: float = 0.0, hpz_size: int = 0) -> dict[str, float]:
    """Bytes per rank by category of a composed run's ranks: the sharded step's (`lab_memory`) and 'sync',
    the technique's sync state on its shard."""
    m = lab_memory(num_params, zero_stage, sharding_degree, optimizer=optimizer, momentum=momentum,
                   hpz_size=hpz_size)
    multiple = math.lcm(sharding_degree, hpz_size or 1)
    c = -(-num_params // multiple) * multiple // sharding_degree  # the shard, padded as the layout pads
    return {**{k: getattr(m, k) for k in ("params", "grads", "optimizer", "buffers")},
            "sync": 4.0 * c * SYNC_VECTORS.get(technique, 0)}


# ---- pieces -------------------------------------------------------------------------------------------------
def _row(tag: str, op: str, every: int, cost) -> dict:
    return {"tag": tag, "op": op, "every": every, "algorithm": cost.algorithm, "seconds": float(cost.seconds),
            **{k: float(np.sum(cost.bytes[k])) for k in LINK_CLASSES}}


def _clip(numels, lo: int, hi: int) -> tuple:
    from lab.compress.exchange import clip_segments

    return clip_segments(numels, lo, hi)


@lru_cache(maxsize=512)
def _exchange_cost(compressor: str, ratio: float, scope: str, feedback: str, w: int, segments: tuple,
                   groups: tuple, topology: Topology):
    """(op, Cost) of one exchange of w values per rank inside every group (segments: one layout per group)."""
    from lab.compress import build_channel
    from lab.compress.exchange import _estimate
    from lab.compress.grouped import choose
    from lab.compress.registry import NO_FEEDBACK, spec
    from lab.topology import compressed as algo

    groups = [list(g) for g in groups]
    size = len(groups[0])
    if compressor == "none" or spec(compressor).summable:
        if compressor == "powersgd":
            raise ValueError("compressor='powersgd' sends factors of the model's matrices: not predicted here")
        nbytes = 4 * w if compressor == "none" else 2 * w
        return "all_reduce", group_cost(topology, "all_reduce", nbytes, groups)
    if compressor in NO_FEEDBACK:
        feedback = "none"
    channel = build_channel(compressor, target=ratio, scope=scope, error_feedback=feedback, eta=0.0, seed=0,
                            shapes=[(n,) for n in segments[0]])
    name = choose(channel, w, size, topology, groups, list(segments)) if len(groups) > 1 else None
    costs = []
    for g, segs in zip(groups, segments):
        plan = channel.plan(w, size, topology, segs, group=g if len(groups) > 1 else None,
                            applicable=(name,) if name else None)
        costs.append(algo.cost(topology, plan.algorithm, _estimate(plan), ranks=g))
    return algo.OP, (merge_costs(costs, groups) if len(groups) > 1 else costs[0])

