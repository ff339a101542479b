"""A payload of real tensors whose size on the wire is counted from the tensors themselves."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Packet:
    """Named tensors sent together, each rank-stacked `(n_local, ...)`.

    `nbytes()` is the size one rank sends: the sum of each tensor's row in its
    own dtype (packed bits live in uint8 tensors, so they count as packed),
    plus `header_bytes` for scalars the receiver needs that are not tensors
    here (for example a shared seed). `meta` holds what both ends know already
    (shapes, k, seeds' derivation) and is never counted.
    """

    tensors: dict[str, torch.Tensor]
    header_bytes: int = 0
    meta: dict = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(row_nbytes(t) for t in self.tensors.values()) + self.header_bytes

    def map(self, fn) -> Packet:
        return Packet({k: fn(v) for k, v in self.tensors.items()}, self.header_bytes, dict(self.meta))


def row_nbytes(x: torch.Tensor) -> int:
    """Bytes of one rank's row of a rank-stacked tensor."""
    assert x.dim() >= 1, "rank-stacked tensors have a leading rank axis"
    return (x.numel() // max(x.shape[0], 1)) * x.element_size() if x.shape[0] else 0


def payload_nbytes(x) -> int:
    return x.nbytes() if isinstance(x, Packet) else row_nbytes(x)
