"""Process-group layouts for sharded training: shard groups, replica groups, hpZ groups, nested levels.

Ranks are numbered `r = rep·S + sh` (spec Part A §A2): a **shard group** is S
contiguous ranks (one copy of the model state, split S ways), a **replica
group** is the R = P/S ranks with the same shard index (stride S), and an
**hpZ group** is H contiguous ranks (normally one node) holding ZeRO++'s
secondary partition. `level_groups` nests groups of sizes (g1, g2, ...) for
hierarchical reductions (qgZ's node/global groups, the Frontier scheme's
die/GPU/node levels).

The flat parameter vector of length d is padded to a multiple of every group
size used (their least common multiple, which divides P), and shard `sh` is the
contiguous slice `[sh·c, (sh+1)·c)` with c = d_pad / S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending: the valid sharding degrees of an n-rank world."""
    return [k for k in range(1, n + 1) if n % k == 0]


def contiguous_groups(world_size: int, size: int) -> list[list[int]]:
    """[[0..size-1], [size..2·size-1], ...]"""
    return [list(range(s, s + size)) for s in range(0, world_size, size)]


def strided_groups(world_size: int, stride: int) -> list[list[int]]:
    """Ranks with the same index modulo `stride`: [[0, stride, ...], [1, stride+1, ...], ...]"""
    return [list(range(i, world_size, stride)) for i in range(stride)]


def level_groups(world_size: int, sizes: tuple[int, ...]) -> list[list[list[int]]]:
    """Groups of each level for nested sizes (g1, g2, ..., gk) with g1·g2·…·gk = P.

    Rank p has digits (a1, a2, ...) in the mixed radix (g1, g2, ...), a1 least
    significant; level ℓ groups the ranks that differ only in digit ℓ, so level 1
    is contiguous blocks of g1 and the last level strides across them.
    """
    if math.prod(sizes) != world_size:
        raise ValueError(f"sizes={sizes!r} is invalid: their product must be the world size {world_size}")
    out, stride = [], 1
    for g in sizes:
        groups = []
        for base in range(world_size):
            if (base // stride) % g == 0:  # digit ℓ is 0: the first member of its level-ℓ group
                groups.append([base + i * stride for i in range(g)])
        out.append(groups)
        stride *= g
    return out


def hierarchical_order(world_size: int, sizes: tuple[int, ...]) -> list[int]:
    """pos[p]: where partition p (owned by rank p) sits in the send buffer of a hierarchical reduce-scatter.

    Level 1 sends chunk j to the group member with digit a1 = j, so chunk j holds
    every partition with a1(p) = j, ordered the same way for the next level:
    pos(p) = a1·P/g1 + a2·P/(g1·g2) + … . For two levels (g1 = D ranks per node,
    g2 = nodes) this is qgZ's swizzle (p % D)·n_nodes + p // D, e.g. partitions
    [0, 4, 1, 5, 2, 6, 3, 7] for 2 nodes × 4 ranks (spec §A3.3).
    """
    pos = []
    for p in range(world_size):
        q, rest, stride = p, world_size, 0
        for g in sizes:
            rest //= g
            stride += (q % g) * rest
            q //= g
        pos.append(stride)
    return pos


@dataclass(frozen=True)
class ShardLayout:
    """S-way sharding replicated R = P/S times, optionally with hpZ groups of H ranks."""

    world_size: int
    sharding_degree: int
    hpz_size: int = 0  # 0: no secondary partition

    def __post_init__(self):
        p, s, h = self.world_size, self.sharding_degree, self.hpz_size
        if s < 1 or p % s:
            raise ValueError(f"sharding_degree={s!r} is invalid: expected a divisor of the world size {p}: "
                             f"{divisors(p)}")
        if h and p % h:
            raise ValueError(f"hpz_size={h!r} is invalid: expected a divisor of the world size {p}: {divisors(p)}")

    @property
    def replication_degree(self) -> int:
        return self.world_size // self.sharding_degree

    def shard_groups(self) -> list[list[int]]:
        return contiguous_groups(self.world_size, self.sharding_degree)

    def replica_groups(self) -> list[list[int]]:
        return strided_groups(self.world_size, self.sharding_degree)

    def hpz_groups(self) -> list[list[int]]:
        return contiguous_groups(self.world_size, self.hpz_size)

    def shard_index(self, rank: int) -> int:
        return rank % self.sharding_degree

    def hpz_index(self, rank: int) -> int:
        return rank % self.hpz_size

    @property
    def multiple(self) -> int:
        """What d is padded to a multiple of: lcm of the group sizes in use."""
        return math.lcm(self.sharding_degree, self.hpz_size or 1)

    def padded(self, d: int) -> int:
        m = self.multiple
        return -(-d // m) * m

    def shard_size(self, d: int) -> int:
        return self.padded(d) // self.sharding_degree
