"""Hierarchical reduce-scatter: one all-to-all per level, reducing in between (qgZ, Frontier's 3 levels).

The gradient's P partitions (partition p belongs to rank p, as in a flat
reduce-scatter) are reordered by `hierarchical_order`, then level by level each
rank sends chunk j of its buffer to the member of its level group with digit j,
and sums what its G peers sent it (fp32, ascending rank). After the last level
rank p holds the sum of partition p over all P ranks. Bytes per rank: (G−1)/G of
the send buffer at each level, and the buffer shrinks G-fold per level, so the
slow outer links carry only 1/(g1·…) of the gradient.

Each level may quantize what it sends with a `Compressor` (qgZ: int4 at both
hops, ZeRO++ arXiv 2306.10209 §qgZ and DeepSpeed `all_to_all_quant_reduce`;
the spec §A3.3): the receiver dequantizes, reduces in fp32 and requantizes for
the next hop, so there are as many quantization stages as levels rather than
the P−1 a quantized ring would need. With no quantizers the result equals a
flat reduce-scatter up to fp association (E1, spec §A3.3 check 1).
"""
from __future__ import annotations

import torch

from lab.comm.collective import Collective, ordered_sum
from lab.compress.base import Compressor
from lab.compress.exchange import all_to_all_compressed
from lab.sharding.layout import hierarchical_order, level_groups


def hierarchical_reduce_scatter(coll: Collective, x: torch.Tensor, *, sizes: tuple[int, ...],
                                quantizers: tuple[Compressor | None, ...] | None = None, op: str = "mean",
                                tag: str = "grads") -> torch.Tensor:
    """(n, P·c) -> (n, c): rank p gets partition p of the sum (or mean) over all ranks.

    sizes: nested group sizes (g1, ..., gk), product P (e.g. (ranks per node, nodes));
    quantizers: one per level (None: send fp32 as is).
    """
    p = coll.world_size
    if x.shape[1] % p:
        raise ValueError(f"hierarchical_reduce_scatter needs dim 1 ({x.shape[1]}) divisible by world_size={p}")
    if op not in ("sum", "mean"):
        raise ValueError(f"op={op!r} is not supported; allowed: 'sum', 'mean'")
    quantizers = quantizers or (None,) * len(sizes)
    if len(quantizers) != len(sizes):
        raise ValueError(f"quantizers has {len(quantizers)} entries for {len(sizes)} levels")
    n, c = x.shape[0], x.shape[1] // p
    pos = torch.tensor(hierarchical_order(p, sizes))
    buf = torch.empty(n, p, c, dtype=torch.float32)
    buf[:, pos] = x.view(n, p, c).float()  # (n, P, c) in send order
    for groups, g, quant in zip(level_groups(p, sizes), sizes, quantizers):
        if g == 1:
            continue
        send = buf.reshape(n, g, -1)  # (n, G, m·c): chunk j goes to the member with digit j
        recv = _exchange(coll, send, groups, quant, tag)  # (n, G, m·c): from each member, its chunk for me
        buf = torch.stack([ordered_sum(recv[i]) for i in range(n)]).view(n, -1, c)  # (n, m, c)
    out = buf.reshape(n, c)
    return out / p if op == "mean" else out


def _exchange(coll: Collective, send: torch.Tensor, groups, quant: Compressor | None, tag: str) -> torch.Tensor:
    groups = None if len(groups) == 1 else groups
    if quant is None:
        return coll.all_to_all(send, tag=tag, groups=groups)
    return all_to_all_compressed(coll, send, quant, groups=groups, tag=tag)  # the compressed hop (lab.compress)
