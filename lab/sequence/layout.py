"""Which tokens each rank of a sequence-parallel group holds, and the groups themselves.

A sequence of N tokens is split over the G ranks of a sequence-parallel (SP) group:

- ``contiguous``: the rank at position i of its group holds tokens [i·N/G, (i+1)·N/G).
- ``zigzag``: the sequence is cut into 2G chunks of c = N/(2G) tokens and position i holds chunks i and
  2G−1−i, so under a causal mask every rank has the same amount of work (Ring Attention's load-balanced
  layout; zhuzilin/ring-flash-attention, spec B2).

Rank-stacked tensors are `(n_local, B, H, C, Dh)` with C = N/G tokens per rank, in the order of
`positions(...)` (ascending within a rank). `shard` and `unshard` convert a full `(B, H, N, Dh)` tensor,
as a single device holds it, to the rank-stacked layout and back (for tests and references only: a
real rank never holds the full tensor).

`sp_groups(world, degree)` partitions the world into SP groups of consecutive ranks (the ranks of one
node first), the layout every method here and the GPT technique use.
"""
from __future__ import annotations

import torch

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str, num_tokens: int, group_size: int) -> None:
    """ValueError unless `layout` exists and splits `num_tokens` evenly over `group_size` ranks."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is invalid: expected one of {list(LAYOUTS)}")
    parts = group_size * (2 if layout == "zigzag" else 1)
    if num_tokens % parts:
        raise ValueError(f"sequence length {num_tokens} is invalid for layout={layout!r} over {group_size} ranks: "
                         f"expected a multiple of {parts}")


def positions(num_tokens: int, group_size: int, layout: str = "contiguous") -> torch.Tensor:
    """(G, N/G) absolute token positions held by each position of a group, ascending within a rank."""
    check_layout(layout, num_tokens, group_size)
    g = group_size
    if layout == "contiguous":
        return torch.arange(num_tokens).view(g, num_tokens // g)
    chunks = torch.arange(num_tokens).view(2 * g, num_tokens // (2 * g))
    return torch.stack([torch.cat([chunks[i], chunks[2 * g - 1 - i]]) for i in range(g)])


def sp_groups(world_size: int, degree: int) -> list[list[int]]:
    """SP groups of `degree` consecutive ranks; ValueError unless `degree` divides `world_size`."""
    if degree < 1 or world_size % degree:
        raise ValueError(f"sp_degree={degree!r} is invalid: expected a divisor of the {world_size} ranks")
    return [list(range(s, s + degree)) for s in range(0, world_size, degree)]


def group_position(rank: int, groups: list[list[int]]) -> tuple[list[int], int]:
    """(the group holding `rank`, the rank's position in it)."""
    g = next(g for g in groups if rank in g)
    return g, g.index(rank)


def shard(x: torch.Tensor, group_size: int, layout: str = "contiguous", *, dim: int = -2) -> torch.Tensor:
    """Full `(…, N, …)` -> rank-stacked `(G, …, N/G, …)`: row i holds the tokens of group position i."""
    dim = dim % x.dim()
    pos = positions(x.shape[dim], group_size, layout)
    return torch.stack([x.index_select(dim, p) for p in pos])


def unshard(rows: torch.Tensor, layout: str = "contiguous", *, dim: int = -2) -> torch.Tensor:
    """Rank-stacked `(G, …, C, …)` -> full `(…, G·C, …)` in position order (the inverse of `shard`)."""
    g = rows.shape[0]
    dim = dim % (rows.dim() - 1)
    full = torch.cat(list(rows.unbind(0)), dim=dim)  # in rank order
    order = positions(full.shape[dim], g, layout).reshape(-1)
    return full.index_select(dim, torch.argsort(order))
