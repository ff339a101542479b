"""Cross-field rules of the sharding family's config fields; `ZeRO.check` calls `check(config, bad)`.

`bad(name, value, allowed)` raises the ValueError every config error uses (field, value, what is allowed).
"""
from __future__ import annotations

import math

from lab import topology as topo
from lab.sharding.layout import divisors

ZEROPP_FLAGS = ("qwz", "hpz", "qgz")
#: compressors fitted to (or decoding through) the whole model's layout: they cannot compress one shard
WHOLE_MODEL = ("powersgd", "fedzip", "3sfc")


def _always(c) -> bool:
    from lab.registry import technique

    return getattr(technique(c.technique), "shards_always", False)


def degree(c) -> int:
    """The sharding degree S a config applies: `sharding_degree`, or for 0 the technique's default — all
    workers for 'zero', no sharding (1) for the sync techniques that compose with it (lab.sync.sharded)."""
    return c.sharding_degree or (c.num_workers if _always(c) else 1)


def reads_sharding(c) -> bool:
    """Whether a config's technique reads the sharding knobs (zero_stage, zeropp, ...): 'zero' at any S, the
    sync techniques that compose with sharding (lab.sync.sharded) only when S > 1."""
    return _always(c) or degree(c) > 1


def hpz_size_of(c, topology) -> int:
    """hpZ's secondary-group size H: 0 without hpZ; `hpz_size`, or by default the ranks per node (composed
    with a sync technique: its gcd with S, so the secondary copy stays inside one replica)."""
    if "hpz" not in parse_zeropp(c.zeropp):
        return 0
    if c.hpz_size:
        return c.hpz_size
    return topology.ranks_per_node if _always(c) else math.gcd(topology.ranks_per_node, degree(c))


def parse_zeropp(value: str) -> frozenset[str]:
    """'none' or e.g. 'qwz+hpz' -> {'qwz', 'hpz'}; raises ValueError for unknown flags."""
    if value in ("", "none"):
        return frozenset()
    flags = value.split("+")
    bad = [f for f in flags if f not in ZEROPP_FLAGS]
    if bad or len(set(flags)) != len(flags):
        raise ValueError(f"zeropp={value!r} is invalid: expected 'none' or a '+'-joined subset of {list(ZEROPP_FLAGS)}")
    return frozenset(flags)


def check(c, bad) -> None:
    if c.sharding_degree and c.num_workers % c.sharding_degree:
        bad("sharding_degree", c.sharding_degree, f"0 (the technique's default) or a divisor of num_workers="
            f"{c.num_workers}: {divisors(c.num_workers)}")
    if c.hpz_size and c.num_workers % c.hpz_size:
        bad("hpz_size", c.hpz_size, f"0 (ranks per node) or a divisor of num_workers={c.num_workers}: "
            f"{divisors(c.num_workers)}")
    try:
        flags = parse_zeropp(c.zeropp)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if c.technique != "zero":
        return
    if flags and c.zero_stage != 3:
        bad("zeropp", c.zeropp, f"'none' with zero_stage={c.zero_stage} (ZeRO++ builds on stage 3)")
    s = c.sharding_degree or c.num_workers
    if "qgz" in flags and s != c.num_workers:
        bad("zeropp", c.zeropp, f"no qgz with sharding_degree={c.sharding_degree}: qgZ reduces over all "
            f"{c.num_workers} workers (sharding_degree 0 or {c.num_workers})")
    if c.reduce_levels != "flat" and s != c.num_workers:
        bad("reduce_levels", c.reduce_levels, f"'flat' with sharding_degree={c.sharding_degree}: a hierarchical "
            f"reduction reduces over all {c.num_workers} workers (sharding_degree 0 or {c.num_workers})")
    if c.reduce_levels == "die+node":
        d = topo.preset(c.topology, c.num_workers).ranks_per_node
        if c.dies_per_gpu < 1 or d % c.dies_per_gpu:
            bad("dies_per_gpu", c.dies_per_gpu, f"a divisor of the {d} ranks per node of topology={c.topology!r}")


def check_composed(c, bad) -> None:
    """Cross-field rules of a sync technique sharded inside its replicas (lab.sync.sharded), S > 1."""
    check(c, bad)
    s, p = degree(c), c.num_workers
    if s == 1:
        return
    if s == p and c.compressor != "none":
        bad("compressor", c.compressor, f"'none' with sharding_degree={s} = num_workers (one replica: nothing "
            "crosses replicas to compress)")
    t = topo.preset(c.topology, p)
    if t.star:
        bad("sharding_degree", c.sharding_degree, f"1 on topology={c.topology!r} (a federated star has no links "
            "between ranks to shard over)")
    if c.compressor in WHOLE_MODEL:
        bad("compressor", c.compressor, f"a compressor other than {list(WHOLE_MODEL)} with sharding_degree="
            f"{c.sharding_degree} (they are fitted to the whole model; each rank compresses its shard)")
    if getattr(c, "compress_algorithm", "auto") == "star":
        bad("compress_algorithm", c.compress_algorithm, f"'auto', 'cheapest', 'all_gather' or 'two_phase' with "
            f"sharding_degree={c.sharding_degree} (the counterparts exchange their shards among themselves)")
    flags = parse_zeropp(c.zeropp)
    if flags and c.zero_stage != 3:
        bad("zeropp", c.zeropp, f"'none' with zero_stage={c.zero_stage} (ZeRO++ builds on stage 3)")
    if "qgz" in flags:
        bad("zeropp", c.zeropp, f"no qgz with technique={c.technique!r}: qgZ reduces over all workers "
            "(technique='zero', sharding_degree 0)")
    h = hpz_size_of(c, t)
    if h and s % h:
        bad("hpz_size", c.hpz_size, f"0 or a divisor of sharding_degree={s}: {divisors(s)} (the secondary copy "
            "stays inside one replica)")
