"""The Collective interface: every way ranks talk, on rank-stacked tensors.

Inputs are `(n_local, ...)`: one row per rank this process holds (all N ranks
when simulated, its own rank under torch.distributed). Outputs are rank-stacked
too and may be expanded views: copy before writing into them in place.

Every call records in the Ledger what each rank sent (see `lab.comm.ledger`);
`record=False` is for observers (metrics, evaluation) that a real system would
not send.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lab.comm.ledger import Ledger
from lab.comm.packet import payload_nbytes


class Collective(ABC):
    """Collectives over `world_size` ranks, of which this process holds `ranks`."""

    def __init__(self, *, world_size: int, ranks: list[int], ledger: Ledger):
        self.world_size = world_size
        self.ranks = list(ranks)
        self.ledger = ledger

    @property
    def num_local(self) -> int:
        return len(self.ranks)

    def _record(self, op: str, x, *, tag: str, record: bool, ranks=None):
        if record:
            self.ledger.record(op, payload_nbytes(x), tag=tag, ranks=ranks)

    def record_peers(self, pairs: list[tuple[int, int]], nbytes: int, *, op: str, tag: str):
        self.ledger.record(op, nbytes, tag=tag, cost=self.ledger.topology.peer_cost(pairs, nbytes, op))

    # ---- the operations ------------------------------------------------------------------
    @abstractmethod
    def all_reduce(self, x: torch.Tensor, *, op: str = "mean", tag: str = "", record: bool = True) -> torch.Tensor:
        """(n, ...) -> (n, ...): every row is the sum (or mean) over all ranks, fp32, ascending rank order."""

    @abstractmethod
    def reduce_scatter(self, x: torch.Tensor, *, op: str = "mean", tag: str = "") -> torch.Tensor:
        """(n, P*c, ...) -> (n, c, ...): rank r gets chunk r of the reduction along dim 1."""

    @abstractmethod
    def all_gather(self, x, *, tag: str = "", record: bool = True):
        """(n, ...) -> (n, P, ...): every rank gets all ranks' rows. Works on a Packet too."""

    @abstractmethod
    def broadcast(self, x: torch.Tensor, *, src: int = 0, tag: str = "") -> torch.Tensor:
        """(n, ...) -> (n, ...): every row becomes rank `src`'s row."""

    @abstractmethod
    def all_to_all(self, x: torch.Tensor, *, tag: str = "") -> torch.Tensor:
        """(n, P, ...) -> (n, P, ...): out[j][i] = in[i][j] (rank i's chunk j goes to rank j)."""

    @abstractmethod
    def shift(self, x: torch.Tensor, *, offset: int = 1, tag: str = "") -> torch.Tensor:
        """Ring send/recv: rank r sends its row to rank (r + offset) % P; returns what each rank received."""

    @abstractmethod
    def server_reduce(self, x: torch.Tensor, *, weights: torch.Tensor, ranks: list[int], tag: str = "") -> torch.Tensor:
        """Federated uplink: clients in `ranks` send their row to the server, which returns
        sum_i weights[i] * x_i (fp32, ascending rank order). weights: (P,) over all ranks.
        Returns the aggregate `(...)` as the server holds it."""

    def server_broadcast(self, x: torch.Tensor, *, ranks: list[int], tag: str = "") -> torch.Tensor:
        """Federated downlink: the server sends `x (...)` to the clients in `ranks`."""
        self._record("server_broadcast", x.unsqueeze(0), tag=tag, record=True, ranks=sorted(ranks))
        return x

    @abstractmethod
    def mix(self, x: torch.Tensor, *, weights: torch.Tensor, tag: str = "") -> torch.Tensor:
        """Gossip: row i becomes sum_j W[i, j] x_j with a (P, P) mixing matrix; each rank sends
        its row to every j with W[j, i] != 0."""

    def mean_metric(self, x: torch.Tensor) -> float:
        """Mean over all ranks of a per-rank scalar (n,), not recorded."""
        return float(self.all_gather(x.detach().double().reshape(-1, 1), record=False)[0].mean())


def ordered_sum(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_r w_r * rows[r] over dim 0 in ascending r, accumulated in fp32."""
    acc = torch.zeros(rows.shape[1:], dtype=torch.promote_types(rows.dtype, torch.float32))
    for r in range(rows.shape[0]):
        acc += rows[r] if weights is None else weights[r] * rows[r]
    return acc


def mixing_pairs(weights: torch.Tensor) -> list[tuple[int, int]]:
    """(src, dst) pairs a mixing matrix needs: j sends to i when W[i, j] != 0, i != j."""
    w = weights.detach().cpu()
    return [(j, i) for i in range(w.shape[0]) for j in range(w.shape[1]) if i != j and w[i, j] != 0]
