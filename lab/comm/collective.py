"""The Collective interface: every way ranks talk, on rank-stacked tensors.

Inputs are `(n_local, ...)`: one row per rank this process holds (all N ranks
when simulated, its own rank under torch.distributed). Outputs are rank-stacked
too and may be expanded views: copy before writing into them in place.

Every call records in the Ledger what each rank sent (see `lab.comm.ledger`);
`record=False` is for observers (metrics, evaluation) that a real system would
not send.

Sub-groups: `all_reduce`, `reduce_scatter`, `all_gather` and `all_to_all` take
`groups=[[ranks], ...]`, a partition of all ranks into groups of equal size G
(shard groups, replica groups, hpZ groups, ...). The collective then runs inside
every group at once: a rank's position in its group is its order among the
group's ranks, ascending (as `torch.distributed.new_group` orders them), and
shapes refer to G instead of the world size. It is recorded as one Ledger entry
whose per-rank bytes and link classes come from the Topology's cost of each
group and whose time is the slowest group's (`group_cost`). `groups=None` or a
single group of every rank is the plain collective.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lab.comm.ledger import Ledger
from lab.comm.packet import payload_nbytes
from lab.topology import Cost, Traffic


class Collective(ABC):
    """Collectives over `world_size` ranks, of which this process holds `ranks`."""

    def __init__(self, *, world_size: int, ranks: list[int], ledger: Ledger):
        self.world_size = world_size
        self.ranks = list(ranks)
        self.ledger = ledger

    @property
    def num_local(self) -> int:
        return len(self.ranks)

    def _record(self, op: str, x, *, tag: str, record: bool, ranks=None, groups=None):
        if record and groups is not None:
            nbytes = payload_nbytes(x)
            self.ledger.record(op, nbytes, tag=tag, cost=group_cost(self.ledger.topology, op, nbytes, groups))
        elif record:
            self.ledger.record(op, payload_nbytes(x), tag=tag, ranks=ranks)

    def _groups(self, groups) -> list[list[int]] | None:
        """Validate `groups` (a partition of all ranks into equal-size groups); None for the whole world."""
        if groups is None:
            return None
        out = [sorted(int(r) for r in g) for g in groups]
        flat = sorted(r for g in out for r in g)
        if flat != list(range(self.world_size)):
            raise ValueError(f"groups={groups!r} is invalid: every rank in 0..{self.world_size - 1} must be in "
                             "exactly one group")
        if len({len(g) for g in out}) != 1:
            raise ValueError(f"groups={groups!r} is invalid: all groups must have the same size")
        return None if len(out) == 1 else out

    def group_of(self, rank: int, groups: list[list[int]] | None) -> list[int]:
        """The group (ascending ranks) that holds `rank`; every rank when `groups` is None."""
        if groups is None:
            return list(range(self.world_size))
        return next(g for g in groups if rank in g)

    def record_peers(self, pairs: list[tuple[int, int]], nbytes: int, *, op: str, tag: str):
        self.ledger.record(op, nbytes, tag=tag, cost=self.ledger.topology.peer_cost(pairs, nbytes, op))

    # ---- the operations ------------------------------------------------------------------
    @abstractmethod
    def all_reduce(self, x: torch.Tensor, *, op: str = "mean", tag: str = "", record: bool = True,
                   groups: list[list[int]] | None = None) -> torch.Tensor:
        """(n, ...) -> (n, ...): every row is the sum (or mean) over all ranks (of its group), accumulated in
        `reduction_dtype` (simulated: in ascending rank order) and returned in x's dtype."""

    @abstractmethod
    def reduce_scatter(self, x: torch.Tensor, *, op: str = "mean", tag: str = "",
                       groups: list[list[int]] | None = None) -> torch.Tensor:
        """(n, P*c, ...) -> (n, c, ...): rank r gets chunk r of the reduction along dim 1
        (with groups: (n, G*c, ...), the rank at position i of its group gets chunk i of the group's reduction)."""

    @abstractmethod
    def all_gather(self, x, *, tag: str = "", record: bool = True, groups: list[list[int]] | None = None):
        """(n, ...) -> (n, P, ...): every rank gets all ranks' rows (with groups: (n, G, ...), its group's rows
        in group order). Works on a Packet too."""

    @abstractmethod
    def broadcast(self, x: torch.Tensor, *, src: int = 0, tag: str = "") -> torch.Tensor:
        """(n, ...) -> (n, ...): every row becomes rank `src`'s row (ValueError unless 0 <= src < P)."""

    @abstractmethod
    def all_to_all(self, x, *, tag: str = "", groups: list[list[int]] | None = None, record: bool = True):
        """(n, P, ...) -> (n, P, ...): out[j][i] = in[i][j] (rank i's chunk j goes to rank j); with groups,
        (n, G, ...) and i, j are positions in the group. Works on a Packet too (every tensor (n, G, ...)).
        `record=False` when the caller records the call itself (e.g. an all_to_all_v whose chunks are padded
        to one size here but sent at their true sizes: lab.moe.exchange)."""

    @abstractmethod
    def shift(self, x: torch.Tensor, *, offset: int = 1, tag: str = "") -> torch.Tensor:
        """Ring send/recv: rank r sends its row to rank (r + offset) % P; returns what each rank received
        (an offset that is a multiple of P returns x: nobody moves)."""

    def send_recv(self, x: torch.Tensor, *, pairs: list[tuple[int, int]], tag: str = "") -> torch.Tensor:
        """Point-to-point along `pairs` (src, dst), all at once; each rank sends at most once and receives at
        most once. Row dst of the result is row src of `x`; rows of ranks that receive nothing are zeros.
        Sub-group rings (`shift` inside groups) and chains (LASP's state passing) are this op."""
        raise NotImplementedError

    def _check_pairs(self, pairs) -> list[tuple[int, int]]:
        pairs = [(int(s), int(d)) for s, d in pairs]
        srcs, dsts = [s for s, _ in pairs], [d for _, d in pairs]
        if len(set(srcs)) != len(srcs) or len(set(dsts)) != len(dsts):
            raise ValueError(f"pairs={pairs!r} is invalid: each rank sends at most once and receives at most once")
        if any(not 0 <= r < self.world_size for r in srcs + dsts):
            raise ValueError(f"pairs={pairs!r} is invalid: ranks must be in 0..{self.world_size - 1}")
        return pairs

    def _check_src(self, src) -> int:
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < self.world_size:
            raise ValueError(f"src={src!r} is invalid: expected a rank in 0..{self.world_size - 1}")
        return src

    @staticmethod
    def _check_offset(offset) -> int:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ValueError(f"offset={offset!r} is invalid: expected an integer (any sign; multiples of P: no move)")
        return offset

    @abstractmethod
    def server_reduce(self, x: torch.Tensor, *, weights: torch.Tensor, ranks: list[int], tag: str = "") -> torch.Tensor:
        """Federated uplink: clients in `ranks` send their row to the server, which returns
        sum_i weights[i] * x_i (fp32, ascending rank order). weights: (P,) over all ranks.
        Returns the aggregate `(...)` as the server holds it."""

    def server_broadcast(self, x: torch.Tensor, *, ranks: list[int], tag: str = "") -> torch.Tensor:
        """Federated downlink: the server sends `x (...)` to the clients in `ranks`."""
        self._record("server_broadcast", x.unsqueeze(0), tag=tag, record=True, ranks=sorted(ranks))
        return x

    def server_gather(self, x, *, ranks: list[int], tag: str = ""):
        """Federated uplink without reduction (for compressed payloads the server decodes one by one):
        clients in `ranks` send their row (a tensor or a Packet) to the server. Returns every rank's rows
        `(n, P, ...)` as the server holds them, mirrored to every process; rows of ranks not in `ranks` are
        carried along but neither counted nor meaningful. Recorded like `server_reduce`."""
        self._record("server_gather", x, tag=tag, record=True, ranks=sorted(ranks))
        return self.all_gather(x, record=False)

    @abstractmethod
    def mix(self, x: torch.Tensor, *, weights: torch.Tensor, tag: str = "") -> torch.Tensor:
        """Gossip: row i becomes sum_j W[i, j] x_j with a (P, P) mixing matrix; each rank sends
        its row to every j with W[j, i] != 0."""

    def mean_metric(self, x: torch.Tensor) -> float:
        """Mean over all ranks of a per-rank scalar (n,), not recorded."""
        return float(self.all_gather(x.detach().double().reshape(-1, 1), record=False)[0].mean())


def group_cost(topology, op: str, payload_bytes: int, groups: list[list[int]]) -> Cost:
    """One collective run inside each group at once: bytes per rank from each group's cost, the
    slowest group's time and message count; the algorithm is named with the group shape, e.g. 'ring[4x2]'."""
    return merge_costs([topology.cost(op, payload_bytes, ranks=g) for g in groups], groups)


def merge_costs(costs: list[Cost], groups: list[list[int]]) -> Cost:
    """The Cost of calls run in every group at once (costs[i]: group i's): bytes summed, the slowest time."""
    slow = max(costs, key=lambda c: c.seconds)
    total = {cls: sum(c.bytes[cls] for c in costs) for cls in slow.bytes}
    algorithms = sorted({c.algorithm for c in costs})
    traffics = [getattr(c, "traffic", None) for c in costs]
    extra = {"traffic": Traffic.concat(traffics)} if traffics and all(t is not None for t in traffics) else {}
    return Cost(slow.seconds, f"{'+'.join(algorithms)}[{len(groups)}x{len(groups[0])}]", total,
                max(c.messages for c in costs), **extra)


#: integer dtypes the reductions sum exactly (in int64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def reduction_dtype(x: torch.Tensor, op: str) -> torch.dtype:
    """The dtype `all_reduce` / `reduce_scatter` accumulate `x` in, the same in every backend: floating point in
    at least fp32 (fp64 stays fp64), integers in int64 (a sum is exact; cast back to the input's dtype it wraps
    as that dtype does). The result always comes back in `x`'s dtype. ValueError for an op other than 'sum' or
    'mean', for 'mean' of integers (not exact: use 'sum', or a floating dtype) and for other dtypes (bool,
    complex)."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op={op!r} is not supported; allowed: 'sum', 'mean'")
    dtype = x.dtype if isinstance(x, torch.Tensor) else None
    if dtype is not None and dtype.is_floating_point:
        return torch.promote_types(dtype, torch.float32)
    if dtype in INTEGER_DTYPES:
        if op == "mean":
            raise ValueError(f"op='mean' is invalid for a {dtype} tensor: an integer mean is not exact; use "
                             "op='sum' (exact, in int64) or a floating-point tensor")
        return torch.int64
    raise ValueError(f"a tensor of dtype {dtype} cannot be reduced: expected a floating-point or integer dtype")


def ordered_sum(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_r w_r * rows[r] over dim 0 in ascending r, in the rows' dtype (at least fp32). Accumulated in that
    dtype, or in the weights' if wider: float64 weights keep a server's sum in float64 even for fp32 rows.

    The definition is the loop `acc += weights[r] * rows[r]`; many tiny fp32/fp64 rows (per-rank metrics, a
    linear model over 10^5 clients) are added by one `index_add_` on the CPU instead, which adds them in the
    same order (the same numbers, without a Python iteration per row)."""
    out = torch.promote_types(rows.dtype, torch.float32)
    acc_dtype = out if weights is None else torch.promote_types(out, weights.dtype)
    p = rows.shape[0]
    if p > 1 and rows[0].numel() <= SMALL_ROW and rows.device.type == "cpu" \
            and rows.dtype in (torch.float32, torch.float64):
        flat = rows.reshape(p, -1)  # (P, m)
        if weights is not None:  # each term in the dtype the loop's product has (0-dim weight times a row)
            term_dtype = rows.dtype if rows.dim() > 1 else torch.promote_types(rows.dtype, weights.dtype)
            flat = weights.to(term_dtype).reshape(p, 1) * flat.to(term_dtype)
        acc = torch.zeros(1, flat.shape[1], dtype=acc_dtype)
        acc.index_add_(0, torch.zeros(p, dtype=torch.long), flat.to(acc_dtype))
        return acc[0].reshape(rows.shape[1:]).to(out)
    acc = torch.zeros(rows.shape[1:], dtype=acc_dtype, device=rows.device)
    if weights is not None and rows.dim() > 1 and rows.dtype in (torch.float32, torch.float64):
        term = torch.empty_like(acc)  # weights[r] * rows[r], formed in the rows' dtype, then held in acc's
        for row, w in zip(rows, weights.tolist()):
            acc += torch.mul(row, w, out=term)
        return acc.to(out)
    for r in range(p):
        acc += rows[r] if weights is None else weights[r] * rows[r]
    return acc.to(out)


#: rows of at most this many elements are summed by `index_add_` instead of a Python loop over the rows
#: (CPU only: on CUDA index_add_ accumulates atomically, in no fixed order)
SMALL_ROW = 64


def mixing_pairs(weights: torch.Tensor) -> list[tuple[int, int]]:
    """(src, dst) pairs a mixing matrix needs: j sends to i when W[i, j] != 0, i != j."""
    w = weights.detach().cpu()
    return [(j, i) for i in range(w.shape[0]) for j in range(w.shape[1]) if i != j and w[i, j] != 0]
