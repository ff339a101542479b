"""The simulated clock: a per-rank timeline of compute and communication, with overlap and stragglers.

Every rank has two streams, like a GPU's compute stream and its communication
stream. Compute runs on the compute stream, one piece after another, each rank
at its own speed (`Topology.rank_speed`: a straggler is a rank with speed < 1).
A communication event takes the seconds the Ledger's cost model gave it and
runs on the communication stream of the ranks that take part:

- a collective starts when every participant is ready (its data is computed
  and its communication stream is free) — so everyone waits for the slowest;
- a point-to-point exchange (`shift`, gossip `mix`) starts, for each receiver,
  when it and the ranks it receives from are ready — a straggler only delays
  its neighbours;
- a blocking event makes the rank's compute wait for it (the default: what
  the technique does next needs the result); inside `overlapping(ready)` the
  events start at the given per-rank `ready` times and compute goes on; a
  later `wait()` makes compute wait for everything in flight.

DDP with `overlap=True` uses this for bucketed gradient all-reduce: the
gradient is cut into buckets, last layers first; bucket b is ready when
b+1 of the B slices of the backward pass are done (backward ≈ 2/3 of a step's
FLOPs, forward 1/3) and its all-reduce runs while the backward continues; the
optimizer step waits for the last bucket. Other techniques can do the same
around their in-flight messages (Streaming DiLoCo's fragments).

The clock is fed by the Ledger (every recorded call) and by the training
context's compute counter (`TrainContext.compute_seconds`; the compute done
since the last event is added before each communication event), so
techniques need no changes for the serial case. `table()` exports the
timeline: one row per rank per event. With no overlap and equal speeds the
makespan equals compute + communication (up to float rounding).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd

TABLE_COLUMNS = ["rank", "kind", "label", "step", "start", "end"]


class Clock:
    """Per-rank compute and communication streams on simulated seconds.

    speed: (P,) relative compute speed per rank (None: all 1). `max_events`
    bounds the stored timeline (the times stay exact beyond it).
    """

    def __init__(self, num_ranks: int, *, speed=None, max_events: int = 200_000):
        if num_ranks < 1:
            raise ValueError(f"num_ranks={num_ranks!r} is invalid: a clock needs at least 1 rank")
        self.num_ranks = num_ranks
        self.speed = np.ones(num_ranks) if speed is None else np.asarray(speed, dtype=float)
        if self.speed.shape != (num_ranks,) or (self.speed <= 0).any():
            raise ValueError(f"speed must hold {num_ranks} positive numbers, got {speed!r}")
        self.compute_free = np.zeros(num_ranks)  # when each rank's compute stream is free
        self.comm_free = np.zeros(num_ranks)  # when each rank's communication stream is free
        self.pending = np.zeros(num_ranks)  # end of the asynchronous communication each rank must wait for
        self.last_compute = (np.zeros(num_ranks), np.zeros(num_ranks))  # (start, end) of the latest compute
        self.compute_seen = 0.0  # nominal compute seconds already on the timeline
        self.compute_total = 0.0  # nominal compute seconds, summed
        self.comm_total = 0.0  # communication seconds, summed
        self.step = 0
        self.max_events = max_events
        #: the stored timeline, one chunk per event: (ranks (k,) int64, kind, label, step, start (k,), end (k,))
        self._chunks: list[tuple] = []
        self._num_events = 0  # rows of the timeline: ranks summed over the chunks
        self._ready: np.ndarray | None = None  # set inside `overlapping`
        self.compute_source = None  # callable returning the training context's compute seconds so far

    # ---- feeding the timeline ----------------------------------------------------------------------
    def compute(self, seconds: float, *, label: str = "compute") -> None:
        """Every rank computes for `seconds` of nominal time (divided by its speed)."""
        if seconds <= 0:
            return
        dur = seconds / self.speed  # (P,)
        start = self.compute_free.copy()
        end = start + dur
        self.compute_free = end
        self.last_compute = (start, end)
        self.compute_seen += seconds
        self.compute_total += seconds
        self._log(range(self.num_ranks), "compute", label, start, end)

    def sync(self, *, label: str = "compute") -> None:
        """Put on the timeline the compute the training context counted since the last event."""
        if self.compute_source is None:
            return
        delta = self.compute_source() - self.compute_seen
        if delta > 1e-12 * max(1.0, self.compute_seen):
            self.compute(delta, label=label)

    def comm(self, seconds: float, *, ranks=None, senders: dict | None = None, label: str = "comm",
             blocking: bool | None = None) -> None:
        """A communication event of `seconds` among `ranks` (default: all).

        senders: {receiver: [ranks it receives from]} for point-to-point
        exchanges (each receiver waits only for its senders); None for a
        collective (everyone waits for the slowest participant).
        """
        ranks = np.arange(self.num_ranks) if ranks is None else np.asarray(sorted(ranks), dtype=np.int64)
        if ranks.size == 0:
            return
        ready = self.compute_free if self._ready is None else self._ready
        t = np.maximum(ready, self.comm_free)  # (P,) when each rank could start
        start = np.zeros(self.num_ranks)
        if senders is None:
            start[ranks] = t[ranks].max()
        else:
            for r in ranks.tolist():
                peers = senders.get(r, ())
                start[r] = max([t[r]] + [t[q] for q in peers])
        end = start + seconds
        self.comm_free[ranks] = end[ranks]
        self.comm_total += seconds
        if blocking is None:
            blocking = self._ready is None
        if blocking:
            self.compute_free[ranks] = np.maximum(self.compute_free[ranks], end[ranks])
        else:
            self.pending[ranks] = np.maximum(self.pending[ranks], end[ranks])
        self._log(ranks.tolist(), "comm", label, start, end)

    def wait(self) -> None:
        """Compute waits for every communication still in flight."""
        self.compute_free = np.maximum(self.compute_free, self.pending)
        self.pending[:] = 0.0

    @contextmanager
    def overlapping(self, ready: np.ndarray):
        """Communication recorded inside starts at the per-rank `ready` times and does not block compute."""
        prev, self._ready = self._ready, np.asarray(ready, dtype=float)
        try:
            yield self
        finally:
            self._ready = prev

    def backward_ready(self, fraction: float, *, forward_share: float = 1 / 3) -> np.ndarray:
        """(P,) times at which `fraction` of the latest compute's backward pass is done on each rank."""
        start, end = self.last_compute
        return start + (end - start) * (forward_share + (1 - forward_share) * fraction)

    def on_record(self, entry, *, ranks=None, cost=None) -> None:
        """Ledger hook: add the pending compute, then the recorded call's communication."""
        self.sync()
        self.step = entry.step
        senders = None
        if cost is not None and entry.algorithm == "p2p" and cost.traffic is not None:
            tr = cost.traffic  # sparse: the (src, dst) pairs that talked, sorted by src
            among = (tr.src < self.num_ranks) & (tr.dst < self.num_ranks)
            if among.any():
                senders = {}
                for s, d in zip(tr.src[among].tolist(), tr.dst[among].tolist()):
                    senders.setdefault(d, []).append(s)
                senders = {r: senders[r] for r in sorted(senders)}
                ranks = sorted(set(senders) | set(tr.src[among].tolist()))
        self.comm(entry.seconds, ranks=ranks, senders=senders,
                  label=f"{entry.op}:{entry.tag}" if entry.tag else entry.op)

    # ---- checkpoints (lab.checkpoint) ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """The timeline so far: every attribute but the compute source (a callable) and the overlap window
        (None between rounds)."""
        assert self._ready is None, "a clock is checkpointed between rounds, not inside `overlapping`"
        return {k: v for k, v in vars(self).items() if k not in ("compute_source", "_ready")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    # ---- reading it --------------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """The makespan: when the last rank finishes everything recorded so far."""
        return float(max(self.compute_free.max(), self.comm_free.max(), self.pending.max()))

    def busy(self, kind: str) -> np.ndarray:
        """(P,) seconds each rank spent in `kind` ('compute' or 'comm') according to the stored events."""
        out = np.zeros(self.num_ranks)
        for ranks, k, _, _, start, end in self._chunks:
            if k == kind:
                np.add.at(out, ranks, end - start)
        return out

    def table(self) -> pd.DataFrame:
        """The timeline: one row per rank per event (rank, kind, label, step, start, end)."""
        if not self._chunks:
            return pd.DataFrame(columns=TABLE_COLUMNS)
        ranks, kinds, labels, steps, starts, ends = zip(*self._chunks)
        sizes = [len(r) for r in ranks]
        return pd.DataFrame({"rank": np.concatenate(ranks), "kind": np.repeat(np.array(kinds, dtype=object), sizes),
                             "label": np.repeat(np.array(labels, dtype=object), sizes),
                             "step": np.repeat(np.array(steps, dtype=np.int64), sizes),
                             "start": np.concatenate(starts), "end": np.concatenate(ends)}, columns=TABLE_COLUMNS)

    def _log(self, ranks, kind, label, start, end):
        if self._num_events >= self.max_events:
            return
        ranks = np.asarray(ranks, dtype=np.int64)
        ranks = ranks[end[ranks] > start[ranks]]  # the ranks the event took time on, in the given order
        if len(ranks):
            self._chunks.append((ranks, kind, label, int(self.step), start[ranks].astype(float),
                                 end[ranks].astype(float)))
            self._num_events += len(ranks)
