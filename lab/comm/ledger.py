"""The Ledger: every collective call, the bytes each rank sent on each link class, and its time.

Bytes come from the actual payload (`lab.comm.packet.payload_nbytes`) and the
topology's collective algorithm (`lab.topology.Topology.cost`). The Ledger is
computed identically in every process of a distributed run, because every
participant of a collective knows the payload size and who took part.

Memory grows linearly with the number of ranks P, never with P² (issue 10):

- each entry's per-rank bytes per link class are (P,) int64 rows, *interned*:
  calls that put the same bytes on the same ranks (every step's gradient
  all-reduce) share one read-only row, and a class a call does not use shares
  the one zero row; so the rows cost 8·P bytes per distinct call, not per call;
- running totals: one (P,) row per link class;
- rank-to-rank traffic (what the topology view colours links by) is a sparse
  `lab.topology.Traffic` of the pairs that actually talked (P for a ring, 2P
  for a star), summed lazily; `traffic_matrix()` makes the dense (P+1, P+1)
  matrix on demand, for the small P a drawing shows.

`Ledger.estimate_bytes(P)` is what `lab.budget` counts for it before a run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lab.topology import LINK_CLASSES, Topology
from lab.topology.cost import Traffic

#: the per-entry fields of the table and of the checkpoint state, in order
FIELDS = ("step", "op", "tag", "algorithm", "payload_bytes", "participants", "messages", "seconds")


@dataclass
class Entry:
    step: int
    op: str
    tag: str
    algorithm: str
    payload_bytes: int  # one participating rank's payload
    participants: int
    messages: int
    seconds: float
    bytes: dict  # link class -> (P,) int64, read-only (shared with equal rows of other entries)

    @property
    def total_bytes(self) -> int:
        return int(sum(v.sum() for v in self.bytes.values()))


class Ledger:
    """Records collective calls; `step` is set by the training loop so entries carry it."""

    #: bytes per rank the Ledger holds before any entry: one total row per link class and the zero row (int64)
    ROWS_PER_RANK = len(LINK_CLASSES) + 1
    #: bytes per talking pair of the sparse traffic: src and dst int64, bytes float64
    PAIR_BYTES = 24

    @staticmethod
    def estimate_bytes(num_ranks: int, *, distinct_calls: int = 4) -> int:
        """Memory this Ledger takes for `num_ranks` ranks: its fixed rows, plus `distinct_calls` calls whose
        bytes differ (each interned (P,) rows on every link class, and 2P talking pairs in the traffic, a
        star's count: up and down). Linear in P."""
        p = num_ranks
        fixed = 8 * Ledger.ROWS_PER_RANK * p
        per_call = 8 * len(LINK_CLASSES) * p + Ledger.PAIR_BYTES * 2 * p
        return fixed + distinct_calls * per_call

    def __init__(self, topology: Topology):
        self.topology = topology
        self.entries: list[Entry] = []
        self.step = 0
        self.seconds = 0.0
        self.clock = None  # a lab.clock.Clock that puts every recorded call on its timeline
        p = topology.num_ranks
        self._totals = {c: np.zeros(p, dtype=np.int64) for c in LINK_CLASSES}
        self._zero = _frozen(np.zeros(p, dtype=np.int64))
        self._rows: dict[bytes, np.ndarray] = {}  # digest -> interned row
        self._traffic = Traffic(p + 1)  # summed so far (pending parts not yet added)
        self._pending: list[Traffic] = []
        self._pending_pairs = 0

    # ---- recording -----------------------------------------------------------------------
    def record(self, op: str, payload_bytes: int, *, tag: str = "", ranks=None, cost=None) -> Entry:
        cost = cost or self.topology.cost(op, payload_bytes, ranks=ranks)
        participants = self.topology.num_ranks if ranks is None else len(ranks)
        rows = {c: self._intern(cost.bytes[c]) for c in LINK_CLASSES}
        e = Entry(self.step, op, tag, cost.algorithm, int(payload_bytes), participants, cost.messages,
                  cost.seconds, rows)
        self.entries.append(e)
        for c in LINK_CLASSES:
            if rows[c] is not self._zero:
                self._totals[c] += rows[c]
        self.seconds += cost.seconds
        tr = getattr(cost, "traffic", None)
        if isinstance(tr, np.ndarray):  # a dense matrix from a hand-made Cost: keep only its non-zero pairs
            tr = Traffic(tr.shape[0], *np.nonzero(tr), tr[np.nonzero(tr)])
        if tr is not None and tr.n == self.topology.num_ranks + 1 and tr.nnz:
            self._pending.append(tr)
            self._pending_pairs += tr.nnz
            if self._pending_pairs > max(4096, 2 * self._traffic.nnz):  # amortised: sum when the parts pile up
                self._flush()
        if self.clock is not None:
            self.clock.on_record(e, ranks=ranks, cost=cost)
        return e

    def _intern(self, row) -> np.ndarray:
        """The shared read-only copy of `row` ((P,) int64): the zero row, or one equal row recorded before."""
        row = np.ascontiguousarray(row, dtype=np.int64)
        assert row.shape == self._zero.shape, f"a cost row has shape {row.shape}, expected {self._zero.shape}"
        if not row.any():
            return self._zero
        key = hashlib.blake2b(row.data, digest_size=16).digest()
        hit = self._rows.get(key)
        if hit is not None and np.array_equal(hit, row):
            return hit
        hit = _frozen(row.copy())
        self._rows[key] = hit
        return hit

    def _flush(self) -> None:
        if self._pending:
            self._traffic = Traffic.concat([self._traffic, *self._pending])
            self._pending, self._pending_pairs = [], 0

    # ---- summaries -----------------------------------------------------------------
    @property
    def traffic(self) -> Traffic:
        """Bytes sent from each rank to each rank so far (index P: a star's server), sparse: the pairs that
        talked, where the cost model gave them."""
        self._flush()
        return self._traffic

    def traffic_matrix(self, num_ranks: int | None = None) -> np.ndarray:
        """The dense (n+1, n+1) traffic among the first n = `num_ranks` ranks (default all P) and the server
        (last row/column; a star's server is index P in the Ledger). For drawing small P: it is n² floats."""
        p = self.topology.num_ranks
        n = p if num_ranks is None else int(num_ranks)
        tr = self.traffic
        keep = ((tr.src < n) | (tr.src == p)) & ((tr.dst < n) | (tr.dst == p))
        src, dst = (np.where(v == p, n, v) for v in (tr.src[keep], tr.dst[keep]))
        out = np.zeros((n + 1, n + 1))
        out[src, dst] = tr.nbytes[keep]
        return out

    def bytes_by_class(self) -> dict[str, int]:
        return {c: int(v.sum()) for c, v in self._totals.items()}

    def bytes_per_rank(self) -> np.ndarray:
        """(P,) bytes each rank sent (downlink counted at the receiving client)."""
        return sum(self._totals.values())

    @property
    def total_bytes(self) -> int:
        return int(self.bytes_per_rank().sum())

    def counters(self) -> dict:
        """Cumulative numbers for one metrics row."""
        by = self.bytes_by_class()
        return {"bytes": sum(by.values()), "bytes_peer": by["intra"] + by["inter"], "bytes_inter": by["inter"],
                "bytes_uplink": by["uplink"], "bytes_downlink": by["downlink"], "comm_seconds": self.seconds}

    def table(self) -> pd.DataFrame:
        cols = list(FIELDS) + [f"bytes_{c}" for c in LINK_CLASSES]
        sums: dict[int, int] = {}  # id(row) -> its sum: shared rows are summed once
        rows = []
        for e in self.entries:
            row = [getattr(e, f) for f in FIELDS]
            for c in LINK_CLASSES:
                r = e.bytes[c]
                s = sums.get(id(r))
                if s is None:
                    s = sums[id(r)] = int(r.sum())
                row.append(s)
            rows.append(row)
        return pd.DataFrame(rows, columns=cols)

    def memory_bytes(self) -> int:
        """Bytes of the numpy tables this Ledger holds (rows, totals, the traffic summed up to now); the
        entries' Python objects (a few hundred bytes each, independent of P) are not counted. Traffic parts
        waiting to be summed add at most twice the summed traffic's pairs (or 4096 pairs) before they are."""
        arrays = [self._zero, *self._rows.values(), *self._totals.values()]
        return sum(a.nbytes for a in arrays) + self.traffic.memory_bytes()

    # ---- checkpoints (lab.checkpoint) ----------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything recorded so far, as plain numbers, strings, lists and numpy arrays:
        {'step', 'seconds', 'entries': {field: [...] for FIELDS}, 'rows': [(P,) int64 distinct nonzero rows],
        'entry_rows': (E, 4) int64 index into rows per link class (-1: zero), 'totals': {class: (P,)},
        'traffic': {'n', 'src', 'dst', 'nbytes'}}. Stable: `load_state_dict` restores an equal Ledger."""
        index = {id(r): i for i, r in enumerate(self._rows.values())}
        entry_rows = np.array([[index.get(id(e.bytes[c]), -1) for c in LINK_CLASSES] for e in self.entries],
                              dtype=np.int64).reshape(len(self.entries), len(LINK_CLASSES))
        return {"step": int(self.step), "seconds": float(self.seconds),
                "entries": {f: [getattr(e, f) for e in self.entries] for f in FIELDS},
                "rows": [np.array(r) for r in self._rows.values()], "entry_rows": entry_rows,
                "totals": {c: v.copy() for c, v in self._totals.items()},
                "traffic": self.traffic.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        p = self.topology.num_ranks
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self._rows = {}
        rows = [self._intern(np.asarray(r, dtype=np.int64)) for r in state["rows"]]
        entry_rows = np.asarray(state["entry_rows"], dtype=np.int64).reshape(-1, len(LINK_CLASSES))
        cols = state["entries"]
        self.entries = []
        for i, idx in enumerate(entry_rows.tolist()):
            fields = {f: cols[f][i] for f in FIELDS}
            self.entries.append(Entry(**fields, bytes={c: self._zero if j < 0 else rows[j]
                                                       for c, j in zip(LINK_CLASSES, idx)}))
        self._totals = {c: np.array(state["totals"][c], dtype=np.int64).reshape(p) for c in LINK_CLASSES}
        self._traffic, self._pending, self._pending_pairs = Traffic.from_state(state["traffic"]), [], 0


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
