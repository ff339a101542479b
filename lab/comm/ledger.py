"""The Ledger: every collective call, the bytes each rank sent on each link class, and its time.

Bytes come from the actual payload (`lab.comm.packet.payload_nbytes`) and the
topology's collective algorithm (`lab.topology.Topology.cost`). The Ledger is
computed identically in every process of a distributed run, because every
participant of a collective knows the payload size and who took part.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lab.topology import LINK_CLASSES, Topology


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
    bytes: dict  # link class -> (P,) int64

    @property
    def total_bytes(self) -> int:
        return int(sum(v.sum() for v in self.bytes.values()))


class Ledger:
    """Records collective calls; `step` is set by the training loop so entries carry it."""

    @staticmethod
    def estimate_bytes(num_ranks: int) -> int:
        """Memory this Ledger's fixed tables take for `num_ranks` ranks (before any entry is recorded)."""
        return 8 * (num_ranks + 1) ** 2 + 8 * len(LINK_CLASSES) * num_ranks

    def __init__(self, topology: Topology):
        self.topology = topology
        self.entries: list[Entry] = []
        self.step = 0
        self._totals = {c: np.zeros(topology.num_ranks, dtype=np.int64) for c in LINK_CLASSES}
        self.seconds = 0.0
        #: (P+1, P+1) bytes sent from each rank to each rank so far (index P: a star's server), where the
        #: cost model gave them (the topology view colours links by it)
        self.traffic = np.zeros((topology.num_ranks + 1,) * 2)
        self.clock = None  # a lab.clock.Clock that puts every recorded call on its timeline

    def record(self, op: str, payload_bytes: int, *, tag: str = "", ranks=None, cost=None) -> Entry:
        cost = cost or self.topology.cost(op, payload_bytes, ranks=ranks)
        participants = self.topology.num_ranks if ranks is None else len(ranks)
        e = Entry(self.step, op, tag, cost.algorithm, int(payload_bytes), participants, cost.messages,
                  cost.seconds, cost.bytes)
        self.entries.append(e)
        for c in LINK_CLASSES:
            self._totals[c] += cost.bytes[c]
        self.seconds += cost.seconds
        if getattr(cost, "traffic", None) is not None and cost.traffic.shape == self.traffic.shape:
            self.traffic += cost.traffic
        if self.clock is not None:
            self.clock.on_record(e, ranks=ranks, cost=cost)
        return e

    # ---- summaries -----------------------------------------------------------------
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
        rows = []
        for e in self.entries:
            row = {"step": e.step, "op": e.op, "tag": e.tag, "algorithm": e.algorithm,
                   "payload_bytes": e.payload_bytes, "participants": e.participants, "messages": e.messages,
                   "seconds": e.seconds}
            for c in LINK_CLASSES:
                row[f"bytes_{c}"] = int(e.bytes[c].sum())
            rows.append(row)
        cols = ["step", "op", "tag", "algorithm", "payload_bytes", "participants", "messages", "seconds"] + [
            f"bytes_{c}" for c in LINK_CLASSES]
        return pd.DataFrame(rows, columns=cols)
