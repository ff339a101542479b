"""Cross-field rules of the sharding family's config fields; `ZeRO.check` calls `check(config, bad)`.

`bad(name, value, allowed)` raises the ValueError every config error uses (field, value, what is allowed).
"""
from __future__ import annotations

from lab import topology as topo
from lab.sharding.layout import divisors

ZEROPP_FLAGS = ("qwz", "hpz", "qgz")


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
        bad("sharding_degree", c.sharding_degree, f"0 (all workers) or a divisor of num_workers={c.num_workers}: "
            f"{divisors(c.num_workers)}")
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
