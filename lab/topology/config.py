"""Adapters from an ExperimentConfig to its Topology: the preset it trains on, its validation, the clock rule."""
from __future__ import annotations

from lab.topology import compressed
from lab.topology.algorithms import ALGORITHMS
from lab.topology.model import Topology
from lab.topology.presets import preset

ALL_REDUCE_CHOICES = ("auto", "cheapest", *ALGORITHMS["all_reduce"])


def for_config(config) -> Topology:
    """The Topology an ExperimentConfig trains on: its preset for `num_workers`, with the pinned all-reduce
    algorithm and the last `slow_ranks` ranks slowed by `straggler_slowdown`."""
    t = preset(config.topology, config.num_workers)
    if config.all_reduce_algorithm != "auto":
        t = t.pin({"all_reduce": config.all_reduce_algorithm})
    if getattr(config, "compress_algorithm", "auto") != "auto":  # how compressed payloads cross ranks
        t = t.pin({compressed.OP: config.compress_algorithm})
    return t.with_stragglers(config.slow_ranks, config.straggler_slowdown) if config.slow_ranks else t


def clock_decides(config, topology: Topology) -> bool:
    """Whether sim_seconds is the per-rank clock's makespan (overlap: DDP's buckets, Streaming DiLoCo's
    `overlap_steps`; or ranks of unequal speed) rather than compute + communication (the two agree otherwise,
    up to float rounding)."""
    return bool(config.overlap) or topology.rank_speed is not None or getattr(config, "overlap_steps", 0) > 0


def check_config(c, bad) -> None:
    """Validate the topology-family fields of an ExperimentConfig; `bad(name, value, allowed)` raises."""
    if not 0 <= c.slow_ranks <= c.num_workers:
        bad("slow_ranks", c.slow_ranks, f"an integer in 0..num_workers={c.num_workers}")
    t = preset(c.topology, c.num_workers)
    try:
        t.check_algorithm("all_reduce", c.all_reduce_algorithm)
    except ValueError as e:
        bad("all_reduce_algorithm", c.all_reduce_algorithm, f"an algorithm that applies here ({e})")
    try:
        compressed.check(t, getattr(c, "compress_algorithm", "auto"))
    except ValueError as e:
        bad("compress_algorithm", c.compress_algorithm, f"an algorithm that applies here ({e})")

